#!/bin/sh
# tests/doccmds.sh - the command blocks of the documentation, one file each,
# so that test.sh runs every command README.md and the man page show
#
#   tests/doccmds.sh OUTDIR FILE...
#
# A Markdown FILE gives its ```sh blocks; a man page (FILE.1) the .nf/.fi
# blocks of its EXAMPLES section, with roff's escapes undone. Comments just
# above a block say how the test runs it, one a line:
#
#   <!-- test: first: COMMANDS -->    (.\" test: first: COMMANDS)
#       run COMMANDS before the block (an image it works on, say)
#   <!-- test: then: COMMANDS -->     run COMMANDS after it (an umount)
#   <!-- test: as a user -->          run it as an unprivileged user
#   <!-- test: skip: WHY -->          do not run it; the test counts it
#
# For block N (01, 02, ...) OUTDIR gets N.sh (the block), N.first and
# N.then (empty if none), N.how (run, user, or skip WHY) and N.where
# (FILE:LINE). A fence with no language, any fence but ```sh and ```text at
# the start of a line (```bash, an indented fence, ~~~), a line that reads
# as a command in a text block or an indented code block, a man page
# command outside .nf/.fi in EXAMPLES (or .EX, .RS, .in there), or a
# directive with no block after it fails the run (exit 1): no command may
# slip past the test.
#
# SPDX-License-Identifier: GPL-2.0-or-later

[ $# -ge 2 ] || { echo "usage: $0 OUTDIR FILE..." >&2; exit 2; }
out=$1; shift
mkdir -p "$out" || exit 1
n=0
for f; do
	case $f in *.md) kind=md ;; *.[1-9]) kind=man ;; *) echo "$0: $f: neither .md nor a man page" >&2; exit 1 ;; esac
	n=$(awk -v kind="$kind" -v out="$out" -v file="${f##*/}" -v n="$n" '
	function directive(text) {
		sub(/^[ \t]+/, "", text)
		if (text ~ /^first: /) { sub(/^first: /, "", text); first = first text "\n" }
		else if (text ~ /^then: /) { sub(/^then: /, "", text); then_ = then_ text "\n" }
		else if (text == "as a user") how = "user"
		else if (text ~ /^skip: /) { sub(/^skip: /, "", text); how = "skip " text }
		else { printf "%s:%d: unknown test directive: %s\n", file, NR, text > "/dev/stderr"; bad = 1 }
		pending = NR
	}
	function start() {
		n++; name = sprintf("%s/%02d", out, n); inblock = 1
		printf "%s:%d\n", file, NR + 1 > (name ".where")
		printf "%s", first > (name ".first")
		printf "%s", then_ > (name ".then")
		print (how == "" ? "run" : how) > (name ".how")
		printf "" > (name ".sh")
		first = then_ = how = ""; pending = 0
	}
	function unroff(s) {
		gsub(/\\-/, "-", s); gsub(/\\\(aq/, "\047", s); gsub(/\\&/, "", s)
		gsub(/\\e/, "\\", s)
		return s
	}
	# a command written as output, or a shell prompt: it would never run
	function looks_run(s) {
		return s ~ /^[ \t]*([$#] )?(sudo )?(fuseexport|mount|umount|fusermount3?|make|touch|truncate|losetup|qemu-nbd|qemu-img|mkfs[.a-z0-9]*|e2fsck|sqlite3|dd|cmp)( |$)/
	}
	kind == "md" && skipping {
		if (/^[ \t]*(```|~~~)/) skipping = 0
		else if (looks_run($0)) {
			printf "%s:%d: a command in a block that is not run: mark it ```sh\n", file, NR > "/dev/stderr"
			bad = 1
		}
		next
	}
	kind == "md" && !inblock && /^<!-- test: .* -->$/ {
		t = $0; sub(/^<!-- test: /, "", t); sub(/ -->$/, "", t); directive(t); next
	}
	kind == "md" && !inblock && /^```sh$/ { start(); next }
	kind == "md" && !inblock && /^```$/ {
		printf "%s:%d: a fence with no language: mark commands ```sh, the rest ```text\n", file, NR > "/dev/stderr"
		bad = 1; skipping = 1; next
	}
	kind == "md" && !inblock && /^```text$/ { skipping = 1; next }
	kind == "md" && !inblock && /^(    |\t)/ && looks_run($0) {
		printf "%s:%d: a command in an indented code block: it would never run; put it in ```sh\n", file, NR > "/dev/stderr"
		bad = 1; next
	}
	kind == "md" && !inblock && (/^```/ || /^[ \t]+```/ || /^[ \t]*~~~/) {
		printf "%s:%d: a fence the test does not take (%s): commands go in ```sh, the rest in ```text, at the start of a line\n", file, NR, $0 > "/dev/stderr"
		bad = 1; skipping = 1; next
	}
	kind == "md" && inblock && /^```$/ { inblock = 0; close(name ".sh"); next }
	kind == "md" && inblock { print > (name ".sh"); next }

	kind == "man" && /^\.SH / { examples = ($0 ~ /^\.SH "?EXAMPLES"?$/) }
	kind == "man" && examples && !inblock && /^\.\\" test: / {
		t = $0; sub(/^\.\\" test: /, "", t); directive(t); next
	}
	kind == "man" && examples && !inblock && /^\.nf$/ { start(); next }
	kind == "man" && examples && inblock && /^\.fi$/ { inblock = 0; close(name ".sh"); next }
	kind == "man" && examples && inblock { print unroff($0) > (name ".sh"); next }
	kind == "man" && examples && /^\.(EX|EE|RS|in)( |$)/ {
		printf "%s:%d: %s in EXAMPLES: the test runs only .nf/.fi blocks\n", file, NR, $0 > "/dev/stderr"
		bad = 1; next
	}
	kind == "man" && examples && !/^\./ && looks_run(unroff($0)) {
		printf "%s:%d: a command outside .nf/.fi in EXAMPLES: it would never run\n", file, NR > "/dev/stderr"
		bad = 1; next
	}

	pending && NR > pending && !/^<!-- test: / && !/^\.\\" test: / {
		printf "%s:%d: a test directive with no block after it\n", file, pending > "/dev/stderr"
		bad = 1; pending = 0
	}
	END {
		if (inblock) { printf "%s: a block that never ends\n", file > "/dev/stderr"; bad = 1 }
		print n
		exit bad
	}' "$f") || exit 1
done
[ "$n" -gt 0 ] || { echo "$0: no blocks found" >&2; exit 1; }
