#!/bin/bash
# test.sh - the fuseexport test suite
#
# Proves fuseexport's contract, as README.md and the man page (fuseexport.1)
# state it, with real clients (cmp, dd, xfs_io, truncate, chmod, touch,
# python's mmap, fio, mkfs.ext4 + mount -o loop, e2fsck, qemu-img) against
# real exports. Output is TAP: one `ok N - name`, `not ok N - name` or
# `ok N - name # SKIP why` line per test, the plan, and a closing line
# `N passed, N failed, N skipped`. The exit status is non-zero if any test failed.
#
# Mount tests need root and /dev/fuse and are skipped without them; under CI=true
# a skip is a failure. Every test runs in its own directory under one mktemp -d
# root; whatever a test mounts, starts or attaches (mounts, servers, loop devices)
# is recorded there and undone after the test and again on exit, even when a test
# fails halfway. Nothing outside that root is touched. As root each test runs
# in a mount namespace of its own, and enable_uring is shared with other runs
# through a lock (see t()), so that runs can share a machine.
#
# Environment:
#   FUSEEXPORT         binary under test (default ./fuseexport, built if missing)
#   FUSEEXPORT_STATIC  static binary for the rescue-shell test (./fuseexport-static)
#   FX_MODES           comma-separated option sets the behaviour tests run under,
#                      e.g. "-q 1,-q 4 --passthrough=auto" (default: see MODES below)
#   FX_NBD_MODE        the option set the NBD tests run under (default: -q 2)
#   FX_ONLY            run only the tests whose name matches this extended regex
#   FX_SKIP            leave out the tests whose name matches this one
#   FX_TIMEOUT         seconds a single test may take (default 150)
#   FX_KEEP=1          keep the temporary directory (test logs) for a look
#   FX_NO_INSTALL=1    do not install missing test tools (tests/deps.sh)
#   CI=true            a skip counts as a failure
#
# SPDX-License-Identifier: GPL-2.0-or-later

set -u
cd "$(dirname "$0")" || exit 1
TOP=$PWD
FUSEEXPORT=${FUSEEXPORT:-./fuseexport}
FUSEEXPORT_STATIC=${FUSEEXPORT_STATIC:-./fuseexport-static}
FX_TIMEOUT=${FX_TIMEOUT:-150}
FX_ONLY=${FX_ONLY:-}
FX_SKIP=${FX_SKIP:-}
CI=${CI:-}
PY=$(command -v python3 || true)
FXIO="$TOP/tests/fxio.py"
MiB=1048576

# the test tools, installed if missing (as the README promises for `make test`)
if [ "$(id -u)" = 0 ] && [ -z "${FX_NO_INSTALL:-}" ] && command -v dpkg-query >/dev/null; then
	sh tests/deps.sh >&2 || echo "# test.sh: could not install all test tools" >&2
fi

if [ ! -x "$FUSEEXPORT" ] && [ "$FUSEEXPORT" = ./fuseexport ]; then
	make -s fuseexport >&2
fi
if [ ! -x "$FUSEEXPORT" ]; then
	echo "not ok 1 - build $FUSEEXPORT"
	echo "1..1"
	echo "0 passed, 1 failed, 0 skipped"
	exit 1
fi
FX=$(realpath "$FUSEEXPORT")
HELP=$("$FX" --help 2>/dev/null)

# The modes every behaviour test runs under: one entry per mode, comma-separated.
# Every mode that changes the data path: direct I/O with four queues
# (spinning or not, as the load allows) and one, the default (passthrough
# where it applies, else the kernel's page cache for reads), the page cache
# for reads and writes, and FUSE over io_uring. Passthrough is auto, not on:
# only read-only and growable exports pass through, a writable fixed-size
# one (-w) is served on the /dev/fuse path.
MODES="-q 1 --passthrough=off --cache=none,-q 4 --passthrough=off --cache=none,-q 4"
MODES="$MODES,-q 2 --passthrough=off --cache=read,-q 2 --passthrough=off --cache=writeback"
if [ -e /sys/module/fuse/parameters/enable_uring ]; then
	MODES="$MODES,-q 2 --io-uring=on --passthrough=off --cache=none"
fi
MODES=${FX_MODES:-$MODES}
# One queue rather than four changes no data path, only how requests meet,
# so under the default -q 1 run only the tests of that (FX_MODES runs all)
ONE_QUEUE="-q 1 --passthrough=off --cache=none"
ONE_QUEUE_TESTS="one thread per queue|^read:|write in place|mmap|interrupted|idle server|fio verify|torture|server killed"
MODE_ONLY=

# FUSE over io_uring is switched on machine-wide (enable_uring), and other
# runs of this suite may share the machine: a test in an io_uring mode sets
# Y itself, holding URING_LOCK shared for its whole run, and t_io_uring,
# which turns it off for a while, holds the lock exclusively; the value
# found at the start is put back at the end only if no other run holds it
URING_PARAM=/sys/module/fuse/parameters/enable_uring
URING_LOCK=/tmp/fuseexport-test-uring.lock

ROOT=$(mktemp -d /tmp/fuseexport-test.XXXXXX) || exit 1
chmod 755 "$ROOT"	# the unprivileged bad-input cases must reach their files
: >"$ROOT/.mounts"; : >"$ROOT/.pids"; : >"$ROOT/.loops"; : >"$ROOT/.cgroups"
URING_WAS= TPID=

# ---------------------------------------------------------------------------
# Cleanup: everything this suite created is identified by $ROOT, and only that
# is undone.

# fuseexport servers of ours: recorded, or running with an argument under $ROOT,
# or chrooted under $ROOT (the rescue-shell test); and NBD servers with an
# argument under $ROOT (python3: a fake server)
our_servers() {
	local p a r pid
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		mapfile -d "" a 2>/dev/null <"$p/cmdline" || continue
		[ ${#a[@]} -gt 0 ] || continue
		r=$(readlink "$p/root" 2>/dev/null) || continue
		case $r in "$ROOT"/*) echo "$pid"; continue ;; esac
		case ${a[0]##*/} in fuseexport*|"${FX##*/}"|qemu-nbd|nbdkit|nbd-server|python3) ;; *) continue ;; esac
		if grep -qx "$pid" "$ROOT/.pids" 2>/dev/null; then echo "$pid"; continue; fi
		for x in "${a[@]}"; do
			case $x in "$ROOT"/*) echo "$pid"; break ;; esac
		done
	done
}

# mount points under $ROOT in this namespace, innermost last
our_mounts() {
	{ cat "$ROOT/.mounts" 2>/dev/null
	  awk -v r="$ROOT/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo
	} | awk '!seen[$0]++'
}

cleanup_all() {
	local pids pid i mp dev loop
	pids=$(our_servers)
	if [ -n "$pids" ]; then
		kill -TERM $pids 2>/dev/null
		for i in $(seq 30); do
			pids=$(for pid in $pids; do [ -d /proc/$pid ] && echo $pid; done)
			[ -z "$pids" ] && break
			sleep 0.1
		done
		[ -n "$pids" ] && kill -KILL $pids 2>/dev/null
	fi
	for i in 1 2 3; do
		for mp in $(our_mounts | tac); do
			findmnt -n --mountpoint "$mp" >/dev/null 2>&1 || continue
			# a fuse mount whose server is gone: abort it so nothing waits on it
			dev=$(findmnt -n -o MAJ:MIN,FSTYPE --mountpoint "$mp" | awk '$2 ~ /^fuse/ { print $1; exit }')
			if [ -n "$dev" ] && [ -w "/sys/fs/fuse/connections/${dev#*:}/abort" ]; then
				echo 1 >"/sys/fs/fuse/connections/${dev#*:}/abort" 2>/dev/null
			fi
			umount -l "$mp" 2>/dev/null
		done
	done
	{ cat "$ROOT/.loops" 2>/dev/null
	  losetup -n -l -O NAME,BACK-FILE 2>/dev/null | awk -v r="$ROOT/" 'index($2, r) == 1 { print $1 }'
	} | sort -u | while read -r loop; do
		[ -b "$loop" ] && losetup -d "$loop" 2>/dev/null
	done
	: >"$ROOT/.mounts"; : >"$ROOT/.pids"; : >"$ROOT/.loops"
	# the memory cgroups a test made, once their processes are gone
	while read -r cg; do
		rmdir "$cg" 2>/dev/null
	done <"$ROOT/.cgroups" 2>/dev/null
}

on_exit() {
	trap - EXIT INT TERM
	if [ -n "${TPID:-}" ]; then	# the test under way
		kill -TERM "$TPID" 2>/dev/null
		wait "$TPID" 2>/dev/null
	fi
	cleanup_all
	if [ -n "$URING_WAS" ]; then
		flock -x -n "$URING_LOCK" sh -c 'echo "$1" >"$2"' _ "$URING_WAS" "$URING_PARAM" 2>/dev/null
	fi
	if [ -n "${FX_KEEP:-}" ]; then echo "# kept $ROOT" >&2; else rm -rf --one-file-system "$ROOT" 2>/dev/null; fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Helpers the tests use (exported: every test runs in its own bash)

# fail says why on the test's own stderr (fd 9, saved by t()), whatever the
# caller redirected, and ends the test
fail() { { echo "FAIL: $*" >&9; } 2>/dev/null || echo "FAIL: $*" >&2; exit 1; }
# refute MESSAGE COMMAND...: fail with MESSAGE if COMMAND succeeds
refute() { local m=$1; shift; if "$@"; then fail "$m"; fi; return 0; }
skip_test() { echo "$*" >"$TESTDIR/.skip"; exit 77; }
log() { echo ": $*" >&2; }
track_mount() { echo "$1" >>"$ROOT/.mounts"; }
track_pid() { echo "$1" >>"$ROOT/.pids"; }
track_loop() { echo "$1" >>"$ROOT/.loops"; }
mounted() { findmnt -n --mountpoint "$1" >/dev/null 2>&1; }
# the per-mount options (MS_RDONLY: ro) of the mount on $1, from mountinfo
mount_opts() { awk -v mp="$1" '$5 == mp { o = $6 } END { print o }' /proc/self/mountinfo; }
fuse_mounted() { findmnt -n -o FSTYPE --mountpoint "$1" 2>/dev/null | grep -q '^fuse'; }
sum() { sha256sum <"$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }
eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; }

# fuseexport servers whose last argument is $1
fx_pid() {
	local p a
	for p in /proc/[0-9]*; do
		mapfile -d "" a 2>/dev/null <"$p/cmdline" || continue
		[ ${#a[@]} -ge 3 ] || continue
		case ${a[0]##*/} in fuseexport*|"${FX##*/}") ;; *) continue ;; esac
		[ "${a[${#a[@]}-1]}" = "$1" ] && echo "${p#/proc/}"
	done
	return 0
}

# wait_gone PID [SECONDS]: 0 once PID has exited
wait_gone() {
	local i
	for i in $(seq $((${2:-10} * 10))); do
		[ -d "/proc/$1" ] || return 0
		grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# fx_up OPTIONS... SOURCE MOUNTPOINT: export (detached), FXPID = the server
fx_up() {
	local mp=${!#}
	"$FX" "$@" 2>"$TESTDIR/fx.err" || fail "fuseexport $*: exit $?: $(cat "$TESTDIR/fx.err")"
	track_mount "$mp"
	[ -s "$TESTDIR/fx.err" ] && fail "fuseexport $* wrote to stderr: $(cat "$TESTDIR/fx.err")"
	FXPID=$(fx_pid "$mp" | head -n1)
	[ -n "$FXPID" ] || fail "no server process found for $mp"
	track_pid "$FXPID"
	fuse_mounted "$mp" || fail "$mp is not a fuse mount after fuseexport returned"
}

# fx_fg OPTIONS... SOURCE MOUNTPOINT: export with -f in the background, FXPID = its pid
fx_fg() {
	local mp=${!#} i
	env --default-signal=INT,TERM,HUP "$FX" -f "$@" 2>"$TESTDIR/fg.err" &
	FXPID=$!
	track_pid "$FXPID"
	track_mount "$mp"
	for i in $(seq 100); do
		fuse_mounted "$mp" && stat "$mp" >/dev/null 2>&1 && return 0
		[ -d "/proc/$FXPID" ] || break
		sleep 0.1
	done
	fail "fuseexport -f $* did not come up: $(cat "$TESTDIR/fg.err")"
}

# mount_held MOUNTPOINT: the other mount namespaces (say, a private one that
# another program made while the export was mounted) that still hold a copy
# of the mount, which keeps the export alive after our umount
mount_held() {
	local p ns seen=" $(readlink /proc/self/ns/mnt) "
	for p in $(grep -lF " $1 " /proc/[0-9]*/mountinfo 2>/dev/null | cut -d/ -f3); do
		ns=$(readlink "/proc/$p/ns/mnt" 2>/dev/null) || continue
		case $seen in *" $ns "*) continue ;; esac
		seen="$seen$ns "
		printf ' (still mounted in %s, of pid %s: %s)' "$ns" "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-80)"
	done
}

# fx_down MOUNTPOINT: umount; the server must exit (0 when it is our child)
fx_down() {
	local i
	for i in 1 2 3 4 5; do	# a client that just exited may still hold it
		umount "$1" 2>/dev/null && break
		sleep 0.2
	done
	mounted "$1" && { umount "$1" || fail "umount $1"; }
	refute "$1 still mounted after umount" mounted "$1"
	wait_gone "$FXPID" 10 || fail "server $FXPID still running 10s after umount$(mount_held "$1")"
	if [ -n "${FXPID:-}" ] && wait "$FXPID" 2>/dev/null; then :; else
		local rc=$?
		# not our child (detached server): its status is not ours to see
		[ $rc -eq 127 ] || fail "server exited with status $rc after umount: $(cat "$TESTDIR/fg.err" 2>/dev/null)"
	fi
	return 0
}

# mkimg FILE MIB: a sparse image with random data at 0, 5M, 17M-19M and the last MiB
mkimg() {
	local f=$1 n=$2
	rm -f "$f"
	truncate -s "${n}M" "$f"
	dd if=/dev/urandom of="$f" bs=1M count=1 conv=notrunc status=none
	if [ "$n" -ge 32 ]; then
		dd if=/dev/urandom of="$f" bs=1M seek=5 count=1 conv=notrunc status=none
		dd if=/dev/urandom of="$f" bs=1M seek=17 count=2 conv=notrunc status=none
	fi
	[ "$n" -ge 2 ] && dd if=/dev/urandom of="$f" bs=1M seek=$((n - 1)) count=1 conv=notrunc status=none
	sync "$f"
}

# put FILE OFFSET DATAFILE [dd flags]: write DATAFILE into FILE at OFFSET
put() {
	dd if="$3" of="$1" bs=64k oflag=seek_bytes seek="$2" conv=notrunc status=none ${4:-} ||
		fail "dd into $1 at $2"
}

# range FILE OFFSET LENGTH: the bytes, on stdout
range() {
	dd if="$1" bs=64k iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none
}

# zeros FILE OFFSET LENGTH: fail unless the range reads as zeros
zeros() {
	cmp <(range "$1" "$2" "$3") <(head -c "$3" /dev/zero) >/dev/null ||
		fail "$1 [$2, +$3) does not read as zeros"
}

# xio FILE COMMANDS...: xfs_io must run the commands without an error
xio() {
	local f=$1 c args=(); shift
	for c; do args+=(-c "$c"); done
	xfs_io "${args[@]}" "$f" 2>"$TESTDIR/xio.err" || fail "xfs_io $* on $f: exit $?: $(cat "$TESTDIR/xio.err")"
	[ -s "$TESTDIR/xio.err" ] && fail "xfs_io $* on $f: $(cat "$TESTDIR/xio.err")"
	return 0
}

# xio_err REGEX FILE COMMANDS...: xfs_io must report an error matching REGEX
xio_err() {
	local re=$1 f=$2 c args=(); shift 2
	for c; do args+=(-c "$c"); done
	xfs_io "${args[@]}" "$f" >"$TESTDIR/xio.out" 2>&1 || :
	grep -Eq "$re" "$TESTDIR/xio.out" || fail "xfs_io $* on $f: want /$re/, got: $(cat "$TESTDIR/xio.out")"
}

# drop_foreign_mounts: in a test's new mount namespace, detach the copies it
# was made with of other exports and other runs' mounts, so that it keeps
# none of them alive after their owners unmount them
drop_foreign_mounts() {
	local mp fs
	findmnt -rn -o TARGET,FSTYPE | while read -r mp fs; do
		mp=$(printf '%b' "$mp")
		case $mp in "$ROOT"/*) continue ;; esac
		case $fs:$mp in fuse.fuseexport:*|*:/tmp/fuseexport-test.*/*)
			umount -l "$mp" 2>/dev/null ;;
		esac
	done
	return 0
}

# libmount's record of the mounts users made (/run/mount/utab, written by
# fusermount3) is a file, which a namespace does not hold: each test gets
# one of its own, so that a mount gone with the test's namespace leaves no
# line in the machine's
private_utab() {
	[ -d /run ] || return 0
	mkdir -p /run/mount && mount -t tmpfs -o size=1M,mode=755 fxutab /run/mount
}

# in_ns FUNCTION ARGS...: run FUNCTION in a private mount namespace
in_ns() {
	unshare -m --propagation private bash -c 'set -e; "$@"' _ "$@"
}

# writeback MODE: does the mode give the kernel a writeback cache? It owns
# the size then, so a write past the end of a fixed-size export is taken
# into the cache and refused only when written back (t_past_end)
writeback() { case " $1 " in *" --cache=writeback "*) return 0 ;; esac; return 1; }
# the kernel caches a writable fixed-size export's pages in MODE: every
# mode but --cache=none (auto takes read, passthrough not applying)
cached() { case " $1 " in *" --cache=none "*) return 1 ;; esac; return 0; }

# the number after -q or --queues= in a mode, if any
mode_queues() {
	local w prev=
	for w in $1; do
		case $w in --queues=*) echo "${w#--queues=}"; return ;; esac
		[ "$prev" = -q ] && { echo "$w"; return; }
		prev=$w
	done
}

# ---------------------------------------------------------------------------
# Behaviour: doc/caching.md's "What the exported file does", a test per row, run
# under every mode ($1)

t_stat() {
	mkimg src 64; : >mp
	fx_up $1 "$PWD/src" "$PWD/mp"
	eq "$(stat -c %s mp)" "$(stat -c %s src)" "size"
	eq "$(stat -c %A mp)" "-r--------" "read-only mode"
	eq "$(stat -c %u:%g mp)" "$(id -u):$(id -g)" "owner"
	eq "$(stat -c %b mp)" "$(stat -c %b src)" "blocks"
	eq "$(stat -c %F mp)" "regular file" "type"
	fx_down "$PWD/mp"
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	eq "$(stat -c %A mp)" "-rw-------" "writable mode"
	eq "$(stat -c %s mp)" "$(stat -c %s src)" "size"
	fx_down "$PWD/mp"
}

t_queues() {
	local n
	n=$(mode_queues "$1")
	[ -n "$n" ] || skip_test "mode names no queue count"
	mkimg src 4; : >mp
	fx_up -w $1 "$PWD/src" "$PWD/mp"
	local th busy=0 i ns
	th=$(ls /proc/$FXPID/task | wc -l)
	case " $1 " in *" --io-uring=on "*)	# and a ring thread per possible CPU
		th=$((th - $(awk -F'[-,]' '{ print $NF + 1 }' /sys/devices/system/cpu/possible))) ;;
	esac
	# besides the queues: main, and a detached server's log thread
	[ "$th" -ge "$n" ] && [ "$th" -le $((n + 2)) ] || fail "the server has $th threads with -q $n"
	# requests from several clients at once are spread over the queues (writes
	# to a fixed-size export reach the server even with passthrough)
	for i in 0 1 2 3; do
		dd if=/dev/zero of=mp bs=4k seek=$((i * 256)) count=256 oflag=direct conv=notrunc status=none &
	done
	wait
	for i in /proc/$FXPID/task/*/schedstat; do
		ns=$(cut -d' ' -f1 "$i")
		[ "$ns" -gt 1000000 ] && busy=$((busy + 1))
	done
	log "threads that ran over 1 ms: $busy of $th"
	[ "$n" -lt 2 ] || [ "$busy" -ge 2 ] || fail "with -q $n only $busy thread served requests"
	fx_down "$PWD/mp"
}

t_read() {
	mkimg src 64; : >mp
	fx_up $1 "$PWD/src" "$PWD/mp"
	cmp src mp || fail "cmp"
	dd if=mp bs=1M iflag=direct status=none | cmp - src || fail "dd iflag=direct"
	dd if=mp bs=4k iflag=direct status=none | cmp - src || fail "dd iflag=direct bs=4k"
	# a read across the end is short
	eq "$(dd if=mp bs=3M iflag=skip_bytes skip=$((63 * MiB)) count=1 status=none | wc -c)" $MiB "bytes read across the end"
	eq "$(dd if=mp bs=1M skip=64 count=1 status=none | wc -c)" 0 "bytes read at the end"
	# unaligned reads
	cmp <(range mp 12345 777777) <(range src 12345 777777) || fail "unaligned read"
	fx_down "$PWD/mp"
}

t_readonly() {
	local before
	mkimg src 64; : >mp
	before=$(sum src)
	fx_up $1 "$PWD/src" "$PWD/mp"
	head -c 4096 /dev/urandom >data
	refute "dd conv=notrunc into a read-only export succeeded" dd if=data of=mp conv=notrunc status=none 2>/dev/null
	refute "dd oflag=direct into a read-only export succeeded" dd if=data of=mp oflag=direct conv=notrunc status=none 2>/dev/null
	refute "dd (O_TRUNC) into a read-only export succeeded" dd if=data of=mp status=none 2>/dev/null
	xio_err 'denied|not permitted|Read-only' "$PWD/mp" "pwrite 0 4k"
	xio_err 'denied|not permitted|Read-only' "$PWD/mp" "fpunch 0 64k"
	refute "pwrite into a read-only export succeeded" [ "$("$PY" "$FXIO" pwrite mp 0 4096)" = 4096 ]
	eq "$(stat -c %s mp)" $((64 * MiB)) "size"
	cmp src mp || fail "export changed"
	# mounted read-only (MS_RDONLY): even metadata stays as it is
	mount_opts "$PWD/mp" | tr , '\n' | grep -qx ro || fail "not mounted read-only: $(mount_opts "$PWD/mp")"
	refute "chmod u+x on a read-only export succeeded" chmod u+x mp 2>chmod.err
	grep -q 'Read-only file system' chmod.err || fail "chmod u+x: $(cat chmod.err)"
	eq "$(stat -c %A mp)" "-r--------" "mode after a refused chmod u+x"
	fx_down "$PWD/mp"
	eq "$(sum src)" "$before" "source checksum"
}

t_write() {
	mkimg src 64; cp src expected; : >mp
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	head -c 300000 /dev/urandom >data
	put mp 4097 data; put expected 4097 data
	put mp $((30 * MiB)) data; put expected $((30 * MiB)) data
	put mp $((64 * MiB - 300000)) data; put expected $((64 * MiB - 300000)) data
	cmp mp expected || fail "read back through the export"
	fx_down "$PWD/mp"
	cmp src expected || fail "source after umount"
}

t_past_end() {
	local s=$((64 * MiB))
	mkimg src 64; cp src expected; : >mp
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	if writeback "$1"; then
		# fxio writes O_DSYNC: the refusal comes when the data is written back
		eq "$("$PY" "$FXIO" pwrite mp $s 4096)" ENOSPC "pwrite at the end"
		eq "$("$PY" "$FXIO" pwrite mp $((s - 4096)) 8192 0x5a)" ENOSPC "a pwrite straddling the end"
		head -c 4096 /dev/zero | tr '\0' Z >z; put expected $((s - 4096)) z
		fx_down "$PWD/mp"
		eq "$(stat -c %s src)" $s "source size"
		cmp src expected || fail "source contents"
		return
	fi
	eq "$("$PY" "$FXIO" pwrite mp $s 4096)" ENOSPC "pwrite at the end"
	eq "$("$PY" "$FXIO" pwrite mp $((s + MiB)) 4096)" ENOSPC "pwrite after the end"
	eq "$("$PY" "$FXIO" pwrite mp $((s - 4096)) 8192 0x5a)" 4096 "bytes written by a pwrite straddling the end"
	eq "$(stat -c %s mp)" $s "size after writes past the end"
	head -c 4096 /dev/zero | tr '\0' Z >z
	xfs_io -d -c "pwrite -S 0x33 -b 8192 $((s - 4096)) 8192" mp >xio.out 2>&1 || :
	if cached "$1"; then
		# the kernel's async direct I/O would take a short write for
		# EIO: refused whole
		grep -q 'No space left' xio.out || fail "O_DIRECT write straddling the end of a cached export: $(cat xio.out)"
	else
		grep -q 'wrote 4096/8192 bytes' xio.out || fail "O_DIRECT write straddling the end: $(cat xio.out)"
		head -c 4096 /dev/zero | tr '\0' 3 >z
	fi
	xfs_io -d -c "pwrite $s 4096" mp >xio.out 2>&1 || :
	grep -q 'No space left' xio.out || fail "O_DIRECT write at the end: $(cat xio.out)"
	xio_err 'No space left' "$PWD/mp" "pwrite $s 64k"
	put expected $((s - 4096)) z
	cmp mp expected || fail "export contents"
	fx_down "$PWD/mp"
	eq "$(stat -c %s src)" $s "source size"
	cmp src expected || fail "source contents"
}

t_grow() {
	local s=$((64 * MiB))
	mkimg src 64; cp src expected; : >mp
	fx_up $1 -g "$PWD/src" "$PWD/mp"
	eq "$(stat -c %A mp)" "-rw-------" "growable mode"
	head -c $MiB /dev/urandom >data
	put mp $s data; put expected $s data
	eq "$(stat -c %s mp)" $((s + MiB)) "size after a write at the end"
	put mp $((s + 3 * MiB)) data; put expected $((s + 3 * MiB)) data
	eq "$(stat -c %s mp)" $((s + 4 * MiB)) "size after a write past the end"
	eq "$("$PY" "$FXIO" pwrite mp $((s + 4 * MiB - 100)) 1000 0x41)" 1000 "straddling pwrite"
	head -c 1000 /dev/zero | tr '\0' A >a; put expected $((s + 4 * MiB - 100)) a
	cmp mp expected || fail "export contents"
	fx_down "$PWD/mp"
	eq "$(stat -c %s src)" $((s + 4 * MiB + 900)) "source size"
	cmp src expected || fail "source contents"
}

t_truncate() {
	local s=$((64 * MiB)) before
	mkimg src 64; cp src expected; : >mp
	before=$(sum src)
	fx_up $1 "$PWD/src" "$PWD/mp"
	refute "truncate of a read-only export succeeded" truncate -s $((s / 2)) mp 2>/dev/null
	eq "$(stat -c %s mp)" $s "read-only size"
	fx_down "$PWD/mp"
	eq "$(sum src)" "$before" "source after refused truncate"
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	truncate -s $((s / 2)) mp || fail "truncate -s 32M"
	eq "$(stat -c %s mp)" $((s / 2)) "size after shrinking"
	truncate -s $s mp || fail "truncate -s 64M"
	eq "$(stat -c %s mp)" $s "size after growing back"
	truncate -s $((s / 2)) expected; truncate -s $s expected
	cmp mp expected || fail "contents after truncate"
	# past the size it started with (and mapped, for READs): data written
	# there reads back, and zeros up to it
	truncate -s $((s * 3 / 2)) mp || fail "truncate -s 96M"
	head -c $MiB /dev/urandom >data
	put mp $((s + MiB)) data; put expected $((s + MiB)) data
	truncate -s $((s * 3 / 2)) expected
	cmp mp expected || fail "contents after growing past the start size"
	fx_down "$PWD/mp"
	cmp src expected || fail "source after truncate"
}

t_otrunc() {
	local s=$((64 * MiB))
	mkimg src 64; cp src expected; : >mp
	head -c 4096 /dev/urandom >data
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	dd if=data of=mp bs=4k status=none || fail "dd of=EXPORT"
	put expected 0 data
	eq "$(stat -c %s mp)" $s "fixed export size after O_TRUNC"
	cmp mp expected || fail "contents after dd of=EXPORT"
	fx_down "$PWD/mp"
	cmp src expected || fail "source"
	# truncate(2) of the path to 0 comes to the server as O_TRUNC does (no
	# file handle): the size stays; ftruncate (truncate -s 0) empties it
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	"$PY" -c 'import os, sys; os.truncate(sys.argv[1], 0)' mp || fail "truncate(2) of the path to 0"
	eq "$(stat -c %s mp)" $s "fixed export size after truncate(2) of the path to 0"
	cmp mp expected || fail "contents after truncate(2) of the path to 0"
	truncate -s 0 mp || fail "truncate -s 0"
	eq "$(stat -c %s mp)" 0 "fixed export size after truncate -s 0 (ftruncate)"
	fx_down "$PWD/mp"
	eq "$(stat -c %s src)" 0 "source size after truncate -s 0"
	fx_up $1 -g "$PWD/src" "$PWD/mp"
	dd if=data of=mp bs=4k status=none || fail "dd of=EXPORT (growable)"
	eq "$(stat -c %s mp)" 4096 "growable export size after O_TRUNC"
	fx_down "$PWD/mp"
	cmp src data || fail "growable source after O_TRUNC"
}

t_chmod() {
	local m
	mkimg src 4; : >mp
	m=$(stat -c %a src)
	fx_up $1 -w --allow-other=off "$PWD/src" "$PWD/mp"
	chmod 400 mp || fail "chmod 400 (writable)"
	eq "$(stat -c %A mp)" "-r--------" "mode after chmod 400"
	chmod 600 mp || fail "chmod 600 (writable)"
	eq "$(stat -c %A mp)" "-rw-------" "mode after chmod 600"
	refute "chmod 644 without allow_other succeeded" chmod 644 mp 2>/dev/null
	refute "chmod 604 without allow_other succeeded" chmod 604 mp 2>/dev/null
	eq "$(stat -c %A mp)" "-rw-------" "mode after refused chmod"
	fx_down "$PWD/mp"
	fx_up $1 --allow-other=off "$PWD/src" "$PWD/mp"
	refute "chmod 600 on a read-only export succeeded" chmod 600 mp 2>/dev/null
	refute "chmod 200 on a read-only export succeeded" chmod 200 mp 2>/dev/null
	eq "$(stat -c %A mp)" "-r--------" "read-only mode after refused chmod"
	# mounted read-only: no chmod at all, as on any read-only mount
	refute "chmod 0 on a read-only export succeeded" chmod 0 mp 2>chmod.err
	grep -q 'Read-only file system' chmod.err || fail "chmod 0 (read-only): $(cat chmod.err)"
	refute "chmod u+x on a read-only export succeeded" chmod u+x mp 2>chmod.err
	grep -q 'Read-only file system' chmod.err || fail "chmod u+x (read-only): $(cat chmod.err)"
	eq "$(stat -c %A mp)" "-r--------" "read-only mode after refused chmod 0 and u+x"
	fx_down "$PWD/mp"
	fx_up $1 -w --allow-other=on "$PWD/src" "$PWD/mp"
	chmod 644 mp || fail "chmod 644 with allow_other"
	eq "$(stat -c %A mp)" "-rw-r--r--" "mode after chmod 644 with allow_other"
	# never setuid, setgid or a capability: why the kernel may skip
	# looking for them on each write (FUSE_HANDLE_KILLPRIV_V2)
	refute "chmod 4644 (setuid) succeeded" chmod 4644 mp 2>/dev/null
	refute "chmod 2644 (setgid) succeeded" chmod 2644 mp 2>/dev/null
	eq "$(stat -c %a mp)" 644 "mode after refused setuid and setgid"
	python3 -c 'import errno, os, sys
for f in (lambda: os.getxattr(sys.argv[1], "user.x"),
	  lambda: os.setxattr(sys.argv[1], "security.capability",
			     b"\1\0\0\2" + bytes(16))):
	try:
		f()
		sys.exit(1)
	except OSError as x:
		if x.errno != errno.EOPNOTSUPP:
			sys.exit(1)' mp || fail "xattrs: not EOPNOTSUPP"
	fx_down "$PWD/mp"
	eq "$(stat -c %a src)" "$m" "source mode"
}

t_chown() {
	mkimg src 4; : >mp
	fx_up $1 -w --allow-other=off "$PWD/src" "$PWD/mp"
	findmnt -n -o OPTIONS --mountpoint "$PWD/mp" | grep -q allow_other && fail "allow_other in the mount options with --allow-other=off"
	refute "chown without allow_other succeeded" chown 1:1 mp 2>/dev/null
	eq "$(stat -c %u:%g mp)" "$(id -u):$(id -g)" "owner after refused chown"
	fx_down "$PWD/mp"
	fx_up $1 -w --allow-other=on "$PWD/src" "$PWD/mp"
	findmnt -n -o OPTIONS --mountpoint "$PWD/mp" | grep -q allow_other || fail "no allow_other in the mount options with --allow-other=on"
	chown 1:1 mp || fail "chown with allow_other"
	eq "$(stat -c %u:%g mp)" "1:1" "owner after chown"
	fx_down "$PWD/mp"
	eq "$(stat -c %u:%g src)" "0:0" "source owner"
}

t_touch() {
	local m
	mkimg src 4; : >mp
	m=$(stat -c %Y src)
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	touch -d @978307200 mp || fail "touch -d"
	eq "$(stat -c %Y mp)" 978307200 "mtime"
	touch -a -d @1000000000 mp || fail "touch -a -d"
	eq "$(stat -c %X mp)" 1000000000 "atime"
	eq "$(stat -c %Y mp)" 978307200 "mtime after touch -a"
	cat mp >/dev/null
	eq "$(stat -c %Y mp)" 978307200 "mtime after a read"
	fx_down "$PWD/mp"
	fx_up $1 "$PWD/src" "$PWD/mp"
	m=$(stat -c %Y mp)
	refute "touch -m -d on a read-only export succeeded" touch -m -d @1234567890 mp 2>touch.err
	grep -q 'Read-only file system' touch.err || fail "touch -m -d (read-only): $(cat touch.err)"
	refute "touch on a read-only export succeeded" touch mp 2>touch.err
	grep -q 'Read-only file system' touch.err || fail "touch (read-only): $(cat touch.err)"
	eq "$(stat -c %Y mp)" "$m" "mtime after a refused touch on a read-only export"
	fx_down "$PWD/mp"
}

t_fpunch() {
	mkimg src 64; cp src expected; : >mp
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	xio "$PWD/mp" "fpunch 256k 64k" "fpunch $((17 * MiB)) 1m"
	zeros mp $((256 * 1024)) 65536
	zeros mp $((17 * MiB)) $MiB
	head -c 65536 /dev/zero >z; put expected $((256 * 1024)) z
	head -c $MiB /dev/zero >z; put expected $((17 * MiB)) z
	cmp mp expected || fail "contents after fpunch"
	eq "$(stat -c %s mp)" $((64 * MiB)) "size after fpunch"
	# the source has holes there now, and SEEK_DATA/SEEK_HOLE agree with it
	eq "$(xfs_io -r -c "seek -h $((256 * 1024))" src | awk '/^HOLE/ { print $2 }')" $((256 * 1024)) "source hole at 256k"
	eq "$(xfs_io -r -c "seek -h $((17 * MiB))" src | awk '/^HOLE/ { print $2 }')" $((17 * MiB)) "source hole at 17M"
	seek_eq "seek -a -d 0" "seek -a -d"
	seek_eq "seek -a -h 0" "seek -a -h"
	fx_down "$PWD/mp"
	cmp src expected || fail "source after fpunch"
}

t_fzero() {
	mkimg src 64; cp src expected; : >mp
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	xio "$PWD/mp" "fzero $((5 * MiB + 4096)) 128k" "fzero $((17 * MiB)) 2m" "fzero 1000 3000"
	zeros mp $((5 * MiB + 4096)) 131072
	zeros mp $((17 * MiB)) $((2 * MiB))
	zeros mp 1000 3000
	head -c 131072 /dev/zero >z; put expected $((5 * MiB + 4096)) z
	head -c $((2 * MiB)) /dev/zero >z; put expected $((17 * MiB)) z
	head -c 3000 /dev/zero >z; put expected 1000 z
	cmp mp expected || fail "contents after fzero"
	eq "$(stat -c %s mp)" $((64 * MiB)) "size after fzero"
	seek_eq "seek -a -d 0" "seek -a -d"
	seek_eq "seek -a -h 0" "seek -a -h"
	fx_down "$PWD/mp"
	cmp src expected || fail "source after fzero"
}

t_falloc() {
	local s=$((64 * MiB)) b0
	mkimg src 64; cp src expected; : >mp
	b0=$(stat -c %b src)
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	xio "$PWD/mp" "falloc $((40 * MiB)) 1m"
	[ "$(stat -c %b src)" -gt "$b0" ] || fail "falloc reserved no blocks in the source"
	zeros mp $((40 * MiB)) $MiB
	eq "$(stat -c %s mp)" $s "size after falloc inside"
	xio "$PWD/mp" "falloc -k $((60 * MiB)) 1m"
	xio_err 'not supported' "$PWD/mp" "fcollapse $((8 * MiB)) 1m"
	xio_err 'not supported' "$PWD/mp" "finsert $((8 * MiB)) 1m"
	eq "$(stat -c %s mp)" $s "size after refused fcollapse/finsert"
	cmp mp expected || fail "contents after falloc"
	seek_eq "seek -a -d 0" "seek -a -d"
	seek_eq "seek -a -h 0" "seek -a -h"
	# past the end, a fixed-size regular file grows as truncate grows it
	xio "$PWD/mp" "falloc 0 $((s + MiB))"
	eq "$(stat -c %s mp)" $((s + MiB)) "fixed size after falloc 0 64M+1M"
	eq "$(stat -c %s src)" $((s + MiB)) "source size after falloc 0 64M+1M"
	zeros mp $s $MiB
	truncate -s $((s + MiB)) expected
	cmp mp expected || fail "contents after falloc past the end"
	eq "$("$PY" "$FXIO" pwrite mp $((s + MiB)) 4096)" ENOSPC "pwrite at the new end"
	fx_down "$PWD/mp"
	cmp src expected || fail "source after falloc"
	fx_up $1 -g "$PWD/src" "$PWD/mp"
	xio "$PWD/mp" "falloc $((s + MiB)) 1m"
	eq "$(stat -c %s mp)" $((s + 2 * MiB)) "growable size after falloc past the end"
	zeros mp $((s + MiB)) $MiB
	fx_down "$PWD/mp"
	eq "$(stat -c %s src)" $((s + 2 * MiB)) "source size after growable falloc"
}

t_seek() {
	mkimg src 64; : >mp
	fx_up $1 "$PWD/src" "$PWD/mp"
	seek_eq "seek -a -r 0" "seek -a -r 0"
	seek_eq "seek -a -r $((3 * MiB))" "seek -a -r 3M"
	seek_eq "seek -d $((20 * MiB))" "seek -d 20M"
	seek_eq "seek -h $((64 * MiB - 1))" "seek -h at the last byte"
	seek_eq "seek -d $((64 * MiB))" "seek -d at the end"
	fx_down "$PWD/mp"
}

# seek_eq COMMAND WHAT [FILE]: xfs_io -r -c COMMAND says the same of mp as of
# FILE (src). While an open that may write is open, every byte is data to
# SEEK_DATA; a writer that just exited ends that with its RELEASE, which the
# kernel sends in the background: so this waits up to 5 s for it
seek_eq() {
	local i
	for i in $(seq 50); do
		[ "$(xfs_io -r -c "$1" mp 2>&1)" = "$(xfs_io -r -c "$1" "${3:-src}" 2>&1)" ] && break
		sleep 0.1
	done
	eq "$(xfs_io -r -c "$1" mp 2>&1)" "$(xfs_io -r -c "$1" "${3:-src}" 2>&1)" "$2"
}

# seek_data FILE OFFSET [XFS_IO COMMANDS BEFORE IT]: the offset SEEK_DATA from
# OFFSET gives in the same xfs_io process, or EOF
seek_data() {
	local f=$1 o=$2 c args=(); shift 2
	for c; do args+=(-c "$c"); done
	xfs_io "${args[@]}" -c "seek -d $o" "$f" | awk '$1 == "DATA" { print $2 }'
}

# Found with an outside model checker (SEEK walk after each write, mmap
# store, punch): bytes the kernel still holds dirty are data to SEEK_DATA
# on a local file system; here the server answers from the source alone.
t_seek_dirty() {
	local d i
	truncate -s $((16 * MiB)) src; : >mp
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	# a buffered write (cached under --cache=writeback), then SEEK_DATA on the writer's fd
	d=$(seek_data mp 0 "pwrite -q -S 0x61 $MiB 4096")
	[ "$d" != EOF ] && [ "$d" -le $MiB ] || fail "SEEK_DATA from 0 after a write at 1M: $d (reads give the bytes)"
	# a store through a shared mapping, not yet written back
	d=$(seek_data mp $((2 * MiB)) "mmap -rw 0 $((16 * MiB))" "mwrite -S 0x62 $((8 * MiB)) 4096")
	[ "$d" != EOF ] && [ "$d" -le $((8 * MiB)) ] || fail "SEEK_DATA from 2M after an mmap store at 8M: $d (reads give the bytes)"
	# the writers gone, their pages written back: a reader gets the source's
	# holes (once their RELEASEs, which the kernel sends in the background, came)
	seek_eq "seek -a -r 0" "a reader's seek -a -r after the writers"
	# a read-only descriptor while another open holds a store unwritten:
	# one opened before the store (every mode)
	eq "$(seek_dirty_reader mp before)" 0 "a reader opened before an mmap store at 0 sees a hole there"
	fx_down "$PWD/mp"
	# and one opened after it, where the kernel keeps its pages across
	# opens (a snapshot: the source proves itself unchanged)
	rm -f src; truncate -s $((16 * MiB)) src
	fx_up $1 --snapshot "$PWD/src" "$PWD/mp"
	eq "$(seek_dirty_reader mp after)" 0 "a reader opened after an mmap store at 0 (snapshot) sees a hole there"
	fx_down "$PWD/mp"
}

# seek_dirty_reader FILE before|after: SEEK_DATA from 0 on a read-only
# descriptor opened before or after a store at 0 through another open's
# shared mapping, while that open is still live (ENXIO: no data at all)
seek_dirty_reader() {
	"$PY" -c 'import errno, mmap, os, sys
f, when = sys.argv[1], sys.argv[2]
if when == "before":
    r = os.open(f, os.O_RDONLY)
w = os.open(f, os.O_RDWR)
os.pread(w, 4096, 4096)
m = mmap.mmap(w, 4096)
m[0:4096] = b"x" * 4096
if when == "after":
    r = os.open(f, os.O_RDONLY)
try:
    print(os.lseek(r, 0, os.SEEK_DATA))
except OSError as e:
    print(errno.errorcode[e.errno])
m.close(); os.close(w); os.close(r)' "$1" "$2"
}

t_fsync() {
	mkimg src 16; cp src expected; : >mp
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	xio "$PWD/mp" "pwrite -S 0x61 4096 8192" "fsync" "pwrite -S 0x62 65536 4096" "fdatasync"
	head -c 8192 /dev/zero | tr '\0' a >a; put expected 4096 a
	head -c 4096 /dev/zero | tr '\0' b >b; put expected 65536 b
	# the data reached the source before umount
	cmp src expected || fail "source after fsync, before umount"
	dd if=a of=mp bs=4k seek=100 conv=notrunc,fsync status=none || fail "dd conv=fsync"
	dd if=a of=mp bs=4k seek=200 conv=notrunc,fdatasync status=none || fail "dd conv=fdatasync"
	fx_down "$PWD/mp"
}

# statfs_sane MOUNTPOINT: stat -f and df work, and the figures add up
statfs_sane() {
	local total free avail
	stat -f "$1" >&2 || fail "stat -f"
	total=$(stat -f -c %b "$1"); free=$(stat -f -c %f "$1"); avail=$(stat -f -c %a "$1")
	[ "$total" -gt 0 ] || fail "statfs reports $total blocks"
	[ "$(stat -f -c %S "$1")" -gt 0 ] || fail "statfs reports a zero block size"
	[ "$free" -le "$total" ] || fail "statfs: free blocks ($free) above total ($total)"
	[ "$avail" -le "$free" ] || fail "statfs: available blocks ($avail) above free ($free)"
	df "$1" >&2 || fail "df"
	df -i "$1" >/dev/null || fail "df -i"
}

t_statfs() {
	mkimg src 16; : >mp
	fx_up $1 "$PWD/src" "$PWD/mp"
	statfs_sane "$PWD/mp"
	fx_down "$PWD/mp"
	fx_up $1 -g "$PWD/src" "$PWD/mp"
	statfs_sane "$PWD/mp"
	[ "$(stat -f -c %a mp)" -gt 0 ] || fail "a growable export on a roomy filesystem reports no space available"
	fx_down "$PWD/mp"
}

t_mmap() {
	mkimg src 64; cp src expected; : >mp
	fx_up $1 "$PWD/src" "$PWD/mp"
	eq "$("$PY" "$FXIO" mmap-read mp)" "$(sum src)" "mmap read of a read-only export"
	fx_down "$PWD/mp"
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	eq "$("$PY" "$FXIO" mmap-read mp)" "$(sum src)" "mmap read of a writable export"
	head -c 10000 /dev/urandom >d1; head -c $((2 * MiB)) /dev/urandom >d2; head -c 100 /dev/urandom >d3
	"$PY" "$FXIO" mmap-write mp 0 d1 || fail "mmap write at 0"
	"$PY" "$FXIO" mmap-write mp $((5 * MiB + 123)) d2 || fail "mmap write at 5M+123"
	"$PY" "$FXIO" mmap-write mp $((64 * MiB - 100)) d3 || fail "mmap write at the end"
	put expected 0 d1; put expected $((5 * MiB + 123)) d2; put expected $((64 * MiB - 100)) d3
	cmp mp expected || fail "read(2) after mmap writes"
	dd if=mp iflag=direct bs=1M status=none | cmp - expected || fail "O_DIRECT read after mmap writes"
	eq "$(stat -c %s mp)" $((64 * MiB)) "size after mmap writes"
	fx_down "$PWD/mp"
	cmp src expected || fail "source after umount"
}

t_direct() {
	mkimg src 64; cp src expected; : >mp
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	head -c $((4 * MiB)) /dev/urandom >data
	dd if=data of=mp bs=1M seek=10 oflag=direct conv=notrunc status=none || fail "dd oflag=direct bs=1M"
	put expected $((10 * MiB)) data
	dd if=data of=mp bs=4k count=16 seek=1000 oflag=direct conv=notrunc status=none || fail "dd oflag=direct bs=4k"
	head -c 65536 data >d64; put expected $((1000 * 4096)) d64
	dd if=mp bs=1M iflag=direct status=none | cmp - expected || fail "dd iflag=direct bs=1M"
	dd if=mp bs=512 count=8192 iflag=direct status=none | cmp - <(head -c $((4 * MiB)) expected) || fail "dd iflag=direct bs=512"
	cmp mp expected || fail "buffered read after O_DIRECT writes"
	fx_down "$PWD/mp"
	cmp src expected || fail "source"
}

t_interrupt() {
	local i c1 c2
	mkimg src 64; cp src expected; : >mp
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	for i in $(seq 20); do
		env --default-signal=INT dd if=mp of=/dev/null bs=1M iflag=direct status=none 2>/dev/null & c1=$!
		env --default-signal=INT dd if=/dev/zero of=mp bs=1M seek=32 count=16 oflag=direct conv=notrunc status=none 2>/dev/null & c2=$!
		sleep 0.0$((RANDOM % 10))
		if [ $((i % 2)) = 0 ]; then kill -INT $c1 $c2 2>/dev/null || :; else kill -KILL $c1 $c2 2>/dev/null || :; fi
		wait $c1 2>/dev/null || :; wait $c2 2>/dev/null || :
	done
	[ -d /proc/$FXPID ] || fail "server died"
	cmp -n $((32 * MiB)) mp expected || fail "reads after interrupted requests"
	dd if=mp of=/dev/null bs=1M iflag=direct status=none || fail "O_DIRECT read after interrupted requests"
	fx_down "$PWD/mp"
}

t_idle() {
	local t0 t1
	mkimg src 4; : >mp
	fx_up $1 "$PWD/src" "$PWD/mp"
	cat mp >/dev/null
	t0=$(awk '{ print $14 + $15 }' /proc/$FXPID/stat)
	sleep 2
	t1=$(awk '{ print $14 + $15 }' /proc/$FXPID/stat)
	[ $((t1 - t0)) -le 10 ] || fail "an idle server used $((t1 - t0)) clock ticks in 2s"
	fx_down "$PWD/mp"
}

fio_run() {
	fio --name=verify --filename="$PWD/mp" --rw=randwrite --bs=4k --size=16M \
		--offset_increment=16M --numjobs=4 --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --group_reporting --minimal "$@" >"$TESTDIR/fio.out" 2>&1 ||
		fail "fio $*: $(cat "$TESTDIR/fio.out")"
}

t_fio() {
	mkimg src 64; : >mp
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	fio_run --ioengine=psync
	fio_run --ioengine=psync --rw=write --bs=1M
	cp mp copy
	fx_down "$PWD/mp"
	cmp src copy || fail "source after fio"
}

t_fio_aio() {
	mkimg src 64; : >mp
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	fio_run --ioengine=libaio --iodepth=16 --direct=1
	fio_run --ioengine=libaio --iodepth=16 --direct=1 --rw=randrw --bs=64k
	cp mp copy
	fx_down "$PWD/mp"
	cmp src copy || fail "source after fio"
}

t_ext4() {
	mkimg src 64; : >mp; mkdir fs
	truncate -s 0 src; truncate -s 64M src
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	mkfs.ext4 -q -F mp || fail "mkfs.ext4 on the export"
	track_mount "$PWD/fs"
	mount -o loop mp fs || fail "mount -o loop"
	head -c $((8 * MiB)) /dev/urandom >fs/big
	cp "$FX" fs/fx; mkdir fs/dir; seq 100000 >fs/dir/seq
	sync
	umount fs || fail "umount the ext4"
	e2fsck -fn mp >"$TESTDIR/fsck" 2>&1 || fail "e2fsck -fn: $(cat "$TESTDIR/fsck")"
	cp mp copy
	qemu-img compare -f raw -F raw mp copy >&2 || fail "qemu-img compare export copy"
	mount -o loop,ro mp fs || fail "mount -o loop,ro again"
	cmp fs/fx "$FX" || fail "file in the ext4"
	seq 100000 | cmp - fs/dir/seq || fail "seq file in the ext4"
	umount fs
	fx_down "$PWD/mp"
	qemu-img compare -f raw -F raw src copy >&2 || fail "qemu-img compare source copy"
	e2fsck -fn src >/dev/null 2>&1 || fail "e2fsck on the source"
}

# a mode's --passthrough=on taken as auto, for tests of exports that cannot
# pass through (-w, windows, block devices): those refuse on
pt_auto() { echo "${1/--passthrough=on/--passthrough=auto}"; }

# O_TRUNC and ftruncate on a growable export reach the source even when
# passthrough writes changed its size without a word to the server
t_grow_truncate() {
	mkimg src 4; : >mp
	fx_up $1 -g "$PWD/src" "$PWD/mp"
	printf 'hello world\n' >mp
	printf 'hi\n' >mp
	printf 'hi\n' >want
	cmp -s mp want || fail "after printf 'hello world\\n' >EXP; printf 'hi\\n' >EXP: $(od -An -c mp | head -n 2)"
	eq "$(stat -c %s mp)" 3 "size after the second O_TRUNC"
	eq "$(stat -c %s src)" 3 "source size after the second O_TRUNC"
	xio "$PWD/mp" "pwrite 8192 4k" "truncate 0"
	eq "$(stat -c %s mp)" 0 "size after pwrite at 8192 and ftruncate 0"
	eq "$(stat -c %s src)" 0 "source size after pwrite at 8192 and ftruncate 0"
	xio "$PWD/mp" "pwrite 0 64k" "truncate 12k"
	eq "$(stat -c %s mp)" 12288 "size after pwrite 64k and ftruncate 12k"
	fx_down "$PWD/mp"
	eq "$(stat -c %s src)" 12288 "source size after the export"
}

# splice reads (copy_file_range, sendfile) see what a shared mapping wrote,
# and never write stale bytes back into the source
splice_check() {
	cp src orig
	fx_up "$@" "$PWD/src" "$PWD/mp"
	"$PY" "$FXIO" splice mp newpage >&2 || fail "[$*] splice reads after an mmap write"
	cmp <(range mp 0 4096) newpage || fail "[$*] page 0 through the export"
	fx_down "$PWD/mp"
	cmp <(range src 0 4096) newpage || fail "[$*] the source's page 0 lost the mmap write"
	cmp <(range src 32768 4096) <(range orig 0 4096) || fail "[$*] the source's page 8 (copy before)"
	cmp <(range src 36864 4096) newpage || fail "[$*] the source's page 9 (copy after the mmap write)"
	cmp <(range src 40960 $((16 * MiB - 40960))) <(range orig 40960 $((16 * MiB - 40960))) ||
		fail "[$*] the source changed past page 9"
}

t_splice() {
	mkimg src 16; : >mp
	splice_check $(pt_auto "$1") -w
	mkimg src 16
	splice_check $1 -g
}

# dd of=EXPORT (O_TRUNC) on a fixed-size export: a process that has it
# mapped goes on reading its pages (no SIGBUS), the size stays
otrunc_mapped() { # otrunc_mapped SOURCE SKIP LENGTH OPTIONS...: SOURCE's [SKIP, +LENGTH) is the export
	local s=$1 skip=$2 len=$3 rc=0 mapper i; shift 3
	range "$s" "$skip" "$len" >expected
	rm -f mapped go
	fx_up "$@" "$s" "$PWD/mp"
	"$PY" "$FXIO" map-hold mp 10 "$PWD" & mapper=$!
	for i in $(seq 100); do [ -e mapped ] && break; sleep 0.1; done
	[ -e mapped ] || fail "[$*] the mapping process did not map the export"
	dd if=/dev/zero of=mp bs=4k count=1 status=none || fail "[$*] dd of=EXPORT"
	: >go
	wait $mapper || rc=$?
	[ $rc -ne 135 ] || fail "[$*] SIGBUS for the process reading its mapping after dd of=EXPORT"
	[ $rc -eq 0 ] || fail "[$*] the mapping process: exit status $rc"
	eq "$(stat -c %s mp)" "$len" "[$*] size after dd of=EXPORT"
	head -c 4096 /dev/zero | dd of=expected conv=notrunc status=none
	cmp mp expected || fail "[$*] contents after dd of=EXPORT"
	fx_down "$PWD/mp"
	cmp <(range "$s" "$skip" "$len") expected || fail "[$*] source after dd of=EXPORT"
}

t_otrunc_mapped() {
	local m loop
	m="$1 --passthrough=off"
	mkimg src 16; cp src orig; : >mp
	otrunc_mapped "$PWD/src" 0 $((16 * MiB)) $m -w
	eq "$(stat -c %s src)" $((16 * MiB)) "source size"
	mkimg src 16; cp src orig
	otrunc_mapped "$PWD/src" $MiB $((8 * MiB)) $m -w --offset=1M --size=8M
	cmp <(range src 0 $MiB) <(range orig 0 $MiB) || fail "bytes before the window changed"
	cmp <(range src $((9 * MiB)) $((7 * MiB))) <(range orig $((9 * MiB)) $((7 * MiB))) ||
		fail "bytes after the window changed"
	mkimg img 16
	loop=$(losetup -f --show img) || fail "losetup"
	track_loop "$loop"
	otrunc_mapped "$loop" 0 $((16 * MiB)) $m -w
	losetup -d "$loop"
}

# a READ racing a shrink comes back whole, short or empty, never EIO
t_shrink_race() {
	truncate -s 64M src; : >mp
	fx_up $(pt_auto "$1") -w "$PWD/src" "$PWD/mp"
	"$PY" "$FXIO" shrink-race mp 3 >race.out 2>&1 || fail "reads racing ftruncate 0 / 64M: $(cat race.out)"
	log "$(cat race.out)"
	fx_down "$PWD/mp"
}

# ---------------------------------------------------------------------------
# Faults: a loop device as source, the source filling up, failing, the server
# killed. Run under every fault mode ($1).

t_loopdev() {
	local loop s
	mkimg img 64; cp img expected; : >mp
	loop=$(losetup -f --show img) || fail "losetup"
	track_loop "$loop"
	s=$(blockdev --getsize64 "$loop")
	case " $1 " in *" --passthrough=on "*)
		refute "--passthrough=on accepted a block device" "$FX" $1 "$loop" "$PWD/mp" 2>err
		grep -q "regular files only" err || fail "refusal says: $(cat err)"
		set -- "${1/--passthrough=on/--passthrough=auto}" ;;
	esac
	fx_up $1 "$loop" "$PWD/mp"
	eq "$(stat -c %s mp)" "$s" "size"
	eq "$(stat -c %A mp)" "-r--------" "mode"
	cmp "$loop" mp || fail "cmp with the loop device"
	dd if=mp bs=1M iflag=direct status=none | cmp - img || fail "dd iflag=direct"
	refute "write to a read-only export" dd if=/dev/zero of=mp bs=4k count=1 conv=notrunc status=none 2>/dev/null
	# a block device keeps no holes: all data, as a file system without
	# SEEK_DATA has it (the device itself answers EINVAL)
	eq "$(xfs_io -r -c "seek -d $MiB" -c "seek -h 0" mp | awk '{ print $1, $2 }' | tr '\n' ' ')" \
		"Whence Result DATA $MiB Whence Result HOLE $s " "SEEK_DATA and SEEK_HOLE"
	fx_down "$PWD/mp"
	fx_up $1 -w "$loop" "$PWD/mp"
	# held open exclusively (as a mounted one is): refused, and why
	: >mp2
	"$FX" -w "$loop" "$PWD/mp2" 2>err && { track_mount "$PWD/mp2"; fail "-w of a block device held exclusively accepted"; }
	grep -q "in use (mounted, or opened exclusively elsewhere)" err || fail "the refusal says: $(cat err)"
	head -c $((2 * MiB)) /dev/urandom >data
	put mp $((3 * MiB + 512)) data conv=notrunc,fsync; put expected $((3 * MiB + 512)) data
	dd if=data of=mp bs=1M seek=30 oflag=direct conv=notrunc status=none || fail "O_DIRECT write"
	put expected $((30 * MiB)) data
	xio "$PWD/mp" "fpunch $((5 * MiB)) 128k" "fzero $((17 * MiB)) 64k" "fsync"
	zeros mp $((5 * MiB)) 131072
	zeros mp $((17 * MiB)) 65536
	head -c 131072 /dev/zero >z; put expected $((5 * MiB)) z
	head -c 65536 /dev/zero >z; put expected $((17 * MiB)) z
	writeback "$1" ||	# there, the refusal comes at write-back: t_past_end
		eq "$("$PY" "$FXIO" pwrite mp "$s" 4096)" ENOSPC "pwrite at the end of a block device"
	xio_err 'No space left' "$PWD/mp" "falloc 0 $((s + MiB))"
	eq "$(stat -c %s mp)" "$s" "size after falloc past the end of a block device"
	cmp mp expected || fail "contents through the export"
	fx_down "$PWD/mp"
	cmp "$loop" expected || fail "loop device contents"
	"$FX" -g "$loop" "$PWD/mp" 2>err && { track_mount "$PWD/mp"; fail "-g on a block device accepted"; }
	refute "mounted after refused -g" mounted "$PWD/mp"
	losetup -d "$loop"
	cmp img expected || fail "image after losetup -d"
}

enospc_ns() {
	local mode=$1 d=$PWD
	mkdir small
	mount -t tmpfs -o size=16m tmpfs small
	mkimg small/img 4; cp small/img expected; : >mp
	fx_fg $mode -g "$d/small/img" "$d/mp"
	if writeback "$mode"; then
		# the error comes at the fsync, and then it is a lost write-back:
		# every later fsync fails and the server's exit status is 1
		dd if=/dev/urandom of=mp bs=64k seek=64 count=1024 conv=notrunc,fsync status=none 2>dd.err &&
			fail "writing until the source is full ended without an error"
		grep -q 'No space left on device' dd.err || fail "the writer saw: $(cat dd.err)"
		[ -d /proc/$FXPID ] || fail "server died"
		cmp -n $((4 * MiB)) mp expected || fail "reads after ENOSPC"
		umount "$d/mp"
		wait_gone "$FXPID" 10 || fail "server still running 10s after umount"
		wait "$FXPID" 2>/dev/null && fail "exit status 0 after a lost write-back"
		cmp -n $((4 * MiB)) small/img expected || fail "source"
		umount small
		return
	fi
	# the error comes at the write, or with a writeback cache at the fsync
	dd if=/dev/urandom of=mp bs=64k seek=64 count=1024 conv=notrunc,fsync status=none 2>dd.err &&
		fail "writing until the source is full ended without an error"
	cat dd.err >&2
	grep -q 'No space left on device' dd.err || fail "the writer saw: $(cat dd.err)"
	eq "$("$PY" "$FXIO" pwrite mp $((32 * MiB)) 4096)" ENOSPC "pwrite past a full source"
	[ -d /proc/$FXPID ] || fail "server died"
	cmp -n $((4 * MiB)) mp expected || fail "reads after ENOSPC"
	dd if=mp of=/dev/null bs=1M status=none || fail "reading the whole export after ENOSPC"
	dd if=mp of=/dev/null bs=1M iflag=direct status=none || fail "O_DIRECT reading after ENOSPC"
	head -c 4096 /dev/urandom >data
	put mp 0 data conv=notrunc,fsync; put expected 0 data
	cmp -n $((4 * MiB)) mp expected || fail "writes inside allocated space after ENOSPC"
	stat mp >/dev/null || fail "stat after ENOSPC"
	fx_down "$d/mp"
	cmp -n $((4 * MiB)) small/img expected || fail "source"
	umount small
}
t_enospc() { in_ns enospc_ns "$1"; }

eio_ns() {
	local mode=$1 d=$PWD rc
	truncate -s 300M xfs.img
	mkfs.xfs -q -f xfs.img || fail "mkfs.xfs"
	mkdir x
	mount -o loop xfs.img x || fail "mount the xfs"
	mkimg x/img 16; : >mp
	fx_fg $mode -w "$d/x/img" "$d/mp"
	cmp mp x/img || fail "read before the failure"
	xfs_io -x -c shutdown "$d/x" || fail "xfs_io shutdown"
	refute "O_DIRECT read of a failed source succeeded" dd if=mp of=/dev/null bs=64k iflag=direct status=none 2>dd.err
	cat dd.err >&2
	grep -q 'Input/output error' dd.err || fail "the reader saw: $(cat dd.err)"
	refute "O_DIRECT write to a failed source succeeded" dd if=/dev/zero of=mp bs=4k count=1 oflag=direct conv=notrunc status=none 2>dd.err
	grep -q 'Input/output error' dd.err || fail "the writer saw: $(cat dd.err)"
	[ -d /proc/$FXPID ] || fail "server died"
	# still serving: another request gets an answer
	rc=0; timeout 10 dd if=mp of=/dev/null bs=4k count=1 skip=100 iflag=direct status=none 2>/dev/null || rc=$?
	[ $rc -ne 124 ] || fail "a read after the failure hung"
	[ -d /proc/$FXPID ] || fail "server died"
	umount "$d/mp" || fail "umount after the failure"
	wait_gone $FXPID 10 || fail "server still running after umount"
	rc=0; wait $FXPID || rc=$?
	log "server exit status after a failed source: $rc"
	umount x
}
t_eio() { in_ns eio_ns "$1"; }

# A write error is every later fsync's: a loop device whose backing file
# (16 MiB, sparse) lies on a 2 MiB tmpfs fails the writeback of 8 MiB
# (written unaligned, so through the source's page cache; the writer may
# see the error at once, as a short write); a read-only client's close
# does not take the error, the writer's fsync, its second one and a new
# client's all get EIO, and the server's final flush fails its exit
# (status 1, one line)
fsync_error_ns() {
	local mode=$1 d=$PWD loop rc out
	mkdir small
	mount -t tmpfs -o size=2m tmpfs small
	truncate -s 16M small/img
	loop=$(losetup -f --show small/img) || fail "losetup"
	track_loop "$loop"
	: >mp
	fx_fg $mode -w "$loop" "$d/mp"
	out=$("$PY" "$FXIO" fsync-error mp) || fail "fxio.py fsync-error: exit $?"
	log "$out"
	case ${out%% *} in
	write=ok|write=short=*|write=ENOSPC|write=EIO) ;;
	*) fail "the 8 MiB write: ${out%% *}" ;;
	esac
	if writeback "$mode"; then
		# the kernel writes its cache back at any close, and the first
		# to ask, a read-only close too, hears what that write-back met;
		# after it, as always, every fsync fails
		case ${out#* } in
		"close-ro="*" fsync="*" fsync-again=EIO fsync-new-client=EIO fdatasync-new-client=EIO") ;;
		*) fail "with a writeback cache, after ${out%% *}: ${out#* }" ;;
		esac
	else
		eq "${out#* }" "close-ro=ok fsync=EIO fsync-again=EIO fsync-new-client=EIO fdatasync-new-client=EIO" \
			"read-only close, fsync, fsync again, a new client's fsync and fdatasync (after ${out%% *})"
	fi
	[ -d /proc/$FXPID ] || fail "server died"
	kill -TERM "$FXPID"
	wait_gone "$FXPID" 10 || fail "server still running 10s after SIGTERM"
	rc=0; wait "$FXPID" || rc=$?
	eq "$rc" 1 "exit status after a failed flush"
	refute "still mounted after SIGTERM" mounted "$d/mp"
	cat fg.err >&2
	eq "$(wc -l <fg.err)" 1 "stderr lines at exit"
	grep -Eqi '^fuseexport: .*(flush|sync)' fg.err || fail "the exit message does not say the flush failed: $(cat fg.err)"
	losetup -d "$loop"
	umount small
}
t_fsync_error() { in_ns fsync_error_ns "$(pt_auto "$1")"; }

# O_DIRECT asks for the medium: once the source's file system is shut
# down, a direct read fails, even of pages the server had read before
eio_direct_ns() {
	local mode=$1 d=$PWD
	truncate -s 300M xfs.img
	mkfs.xfs -q -f xfs.img || fail "mkfs.xfs"
	mkdir x
	mount -o loop xfs.img x || fail "mount the xfs"
	mkimg x/img 16; : >mp
	fx_fg $mode -w --passthrough=off "$d/x/img" "$d/mp"
	cmp mp x/img || fail "read before the failure"
	xfs_io -x -c shutdown "$d/x" || fail "xfs_io shutdown"
	refute "the shut down xfs still reads" dd if=x/img of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null
	refute "O_DIRECT read of a failed source succeeded" dd if=mp of=/dev/null bs=4k count=1 iflag=direct 2>dd.err
	cat dd.err >&2
	grep -q "error reading 'mp': Input/output error" dd.err || fail "the O_DIRECT read itself did not fail with EIO: $(cat dd.err)"
	[ -d /proc/$FXPID ] || fail "server died"
	umount "$d/mp" || fail "umount after the failure"
	wait_gone $FXPID 10 || fail "server still running after umount"
	wait $FXPID || :
	umount x
}
t_eio_direct() { in_ns eio_direct_ns "$1"; }

t_sigkill() {
	local rpid rc t0
	mkimg src 64; cp src expected; : >mp
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	head -c $MiB /dev/urandom >data
	put mp $((2 * MiB)) data conv=notrunc,fsync; put expected $((2 * MiB)) data
	( while dd if=mp of=/dev/null bs=64k iflag=direct status=none 2>/dev/null; do :; done ) &
	rpid=$!
	( while dd if=mp of=/dev/null bs=1M status=none 2>/dev/null; do :; done ) &
	sleep 0.5
	kill -KILL "$FXPID"
	wait_gone "$FXPID" 5 || fail "server survived SIGKILL"
	wait_gone "$rpid" 10 || fail "a reader hangs after the server was killed"
	wait
	rc=0; timeout 10 cat mp >/dev/null 2>cat.err || rc=$?
	[ $rc -ne 124 ] || fail "cat of a dead export hangs"
	[ $rc -ne 0 ] || fail "cat of a dead export succeeded"
	log "cat: $(cat cat.err)"
	rc=0; timeout 20 "$FX" $1 "$PWD/src" "$PWD/mp" 2>err || rc=$?
	[ $rc -ne 0 ] || { track_pid "$(fx_pid "$PWD/mp")"; fail "export over a dead export accepted"; }
	[ $rc -ne 124 ] || fail "fuseexport on a dead export hangs"
	cat err >&2
	eq "$(wc -l <err)" 1 "stderr lines"
	grep -q '^fuseexport: .*umount' err || fail "message does not say umount clears it: $(cat err)"
	umount "$PWD/mp" || fail "umount of the dead export"
	refute "still mounted" mounted "$PWD/mp"
	cmp src expected || fail "source after SIGKILL"
	fx_up $1 "$PWD/src" "$PWD/mp"
	cmp mp expected || fail "a new export after clearing the dead one"
	fx_down "$PWD/mp"
}

# ---------------------------------------------------------------------------
# Fault rules, the volatile write cache and the control FIFO (issue 14), with
# real clients. The cases without a loop device run as root and again as
# uid 65534 through fusermount3 (as_nonroot).

# fx_end MOUNTPOINT: end an export as whoever we are (root: fx_down)
fx_end() {
	if [ "$(id -u)" = 0 ]; then fx_down "$1"; return; fi
	fusermount3 -u "$1" || fail "fusermount3 -u $1"
	wait_gone "$FXPID" 10 || fail "server $FXPID still running after fusermount3 -u"
}

# wait_crashed MOUNTPOINT: until a read of the export fails (the control
# thread took the crash)
wait_crashed() {
	local i
	for i in $(seq 50); do
		dd if="$1" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null || return 0
		sleep 0.1
	done
	fail "the export still reads 5s after the crash"
}

# loop_off LOOP: detach LOOP and wait until it lets go of its backing
# file (a udev probe holding it open defers the detach)
loop_off() {
	local i
	losetup -d "$1" || fail "losetup -d $1"
	for i in $(seq 100); do
		losetup "$1" >/dev/null 2>&1 || return 0
		sleep 0.1
	done
	fail "$1 still holds its backing file 10s after losetup -d"
}

# as_nonroot FUNCTION ARGS...: run FUNCTION as uid 65534, in a private mount
# namespace with a 0666 /dev/fuse, in a directory of its own
nonroot_run_ns() {
	mknod fuse c 10 229; chmod 666 fuse; mount --bind fuse /dev/fuse
	mkdir u; chown 65534:65534 u; cd u
	chmod a+w "$ROOT/.mounts" "$ROOT/.pids"
	TESTDIR=$PWD PY=/usr/bin/python3 as_user env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		bash -c 'set -eE; "$@"' _ "$@"
}
as_nonroot() { in_ns nonroot_run_ns "$@"; }

# A bad sector: ext4 on a loop device over an export whose reads of one
# file's blocks fail; the other file reads, the kernel names the sector
t_fault_badsector() {
	local mode=$1 loop blocks lo hi gb n dev last
	mkdir files fs
	head -c $((256 * 1024)) /dev/urandom >files/bad
	head -c $((256 * 1024)) /dev/urandom >files/good
	truncate -s 64M src; : >mp
	mkfs.ext4 -q -F -b 4096 -d files src || fail "mkfs.ext4 -d"
	blocks=$(debugfs -R "blocks /bad" src 2>/dev/null)
	gb=$(debugfs -R "blocks /good" src 2>/dev/null)
	[ -n "$blocks" ] && [ -n "$gb" ] || fail "debugfs found no blocks"
	lo=$(tr ' ' '\n' <<<"$blocks" | grep . | sort -n | head -n1)
	hi=$(tr ' ' '\n' <<<"$blocks" | grep . | sort -n | tail -n1)
	for n in $gb; do
		[ "$n" -lt "$lo" ] || [ "$n" -gt "$hi" ] || fail "good's block $n lies among bad's ($lo-$hi)"
	done
	log "bad's blocks $lo-$hi: faulting bytes $((lo * 4096))+$(((hi - lo + 1) * 4096))"
	fx_up $mode --fault=op=read,offset=$((lo * 4096)),length=$(((hi - lo + 1) * 4096)),error=EIO "$PWD/src" "$PWD/mp"
	loop=$(losetup -r -f --show mp) || fail "losetup over the export"
	track_loop "$loop"; track_mount "$PWD/fs"
	mount -o ro "$loop" fs || fail "mount the ext4"
	last=$(dmesg 2>/dev/null | tail -n1)
	cmp fs/good files/good || fail "a file outside the bad range"
	refute "a file in the bad range read" cat fs/bad >/dev/null 2>cat.err
	grep -q 'Input/output error' cat.err || fail "the reader saw: $(cat cat.err)"
	cmp fs/good files/good || fail "the good file after the bad one"
	dev=${loop#/dev/}
	if [ -n "$last" ]; then	# the kernel's lines since, rate limits aside
		dmesg | awk -v last="$last" 'seen; $0 == last { seen = 1 }' >dmesg.new
		if ! grep -q "I/O error, dev $dev, sector" dmesg.new; then
			# the kernel prints at most 10 such lines in 5 s: earlier
			# tests may have used them up; read again in a new window
			sleep 6
			cat fs/bad >/dev/null 2>&1 || :
			dmesg | awk -v last="$last" 'seen; $0 == last { seen = 1 }' >dmesg.new
		fi
		if ! grep "I/O error, dev $dev, sector" dmesg.new >dmesg.err; then
			grep -q 'blk_print_req_error: .* suppressed' dmesg.new ||
				fail "no I/O error of $dev in the kernel log: $(cat dmesg.new)"
			skip_test "the kernel's rate limit kept the I/O error out of its log"
		fi
		head -n 3 dmesg.err >&2
		n=$(sed -n 's/.*, sector \([0-9]*\) .*/\1/p' dmesg.err | head -n1)
		[ "$n" -ge $((lo * 8)) ] && [ "$n" -lt $(((hi + 1) * 8)) ] ||
			fail "the kernel names sector $n, not one of $((lo * 8))-$(((hi + 1) * 8 - 1))"
	else
		log "the kernel log is not readable here: the sector is not checked"
	fi
	umount fs; loop_off "$loop"
	fx_down "$PWD/mp"
}

# A disk that fills up: after 10 writes every write gets ENOSPC, and a
# failed write changes nothing
fault_enospc() {
	local mode=$1
	mkimg src 4; cp src expected; : >mp
	fx_up $mode -w --fault=op=write,error=ENOSPC,after=10 "$PWD/src" "$PWD/mp"
	dd if=/dev/zero of=mp bs=4k count=100 oflag=direct conv=notrunc 2>dd.err &&
		fail "dd wrote 100 blocks past the rule"
	cat dd.err >&2
	grep -q 'No space left on device' dd.err || fail "dd saw: $(cat dd.err)"
	grep -q '^10+0 records out' dd.err || fail "dd wrote other than 10 blocks: $(cat dd.err)"
	eq "$("$PY" "$FXIO" pwrite mp $MiB 4096)" ENOSPC "python's pwrite"
	cmp -n $MiB <(range mp $((40 * 1024)) $MiB) <(range expected $((40 * 1024)) $MiB) ||
		fail "reads after ENOSPC"
	fx_end "$PWD/mp"
	head -c 40960 /dev/zero | cmp - <(range src 0 40960) || fail "the 10 writes let through"
	cmp <(range src 40960 $((4 * MiB - 40960))) <(range expected 40960 $((4 * MiB - 40960))) ||
		fail "a failed write changed the source"
}
t_fault_enospc() { fault_enospc "$1"; }
t_fault_enospc_user() { as_nonroot fault_enospc "$1"; }

# A slow disk: a 20 ms delay on reads shows in fio's completion latency
fault_delay() {
	local mode=$1 mean
	mkimg src 4; : >mp
	fx_up $mode --fault=op=read,delay=20ms "$PWD/src" "$PWD/mp"
	fio --name=slow --filename="$PWD/mp" --readonly --rw=randread --bs=4k --direct=1 \
		--ioengine=psync --size=4M --io_size=160k --output-format=json \
		--output=fio.json >fio.err 2>&1 || fail "fio: $(cat fio.err)"
	mean=$("$PY" -c 'import json, sys
print(int(json.load(open("fio.json"))["jobs"][0]["read"]["clat_ns"]["mean"]))')
	log "fio: clat mean ${mean} ns with a 20 ms delay rule"
	[ "$mean" -ge 20000000 ] || fail "fio's clat mean is $mean ns, under the 20 ms delay"
	fx_end "$PWD/mp"
}
t_fault_delay() { fault_delay "$1"; }
t_fault_delay_user() { as_nonroot fault_delay "$1"; }

# A delay is cut short: a write asleep in one when the power goes fails
# and never reaches the source (without a volatile cache every write
# acknowledged is there, none after); SIGTERM does not wait out 10 minutes
t_fault_delay_cut() {
	local dd i
	mkimg src 4; cp src before; : >mp
	head -c 4096 /dev/urandom >data
	fx_fg $1 -d -w --control="$PWD/ctl" --fault=op=write,delay=3s "$PWD/src" "$PWD/mp"
	dd if=data of=mp bs=4k count=1 conv=notrunc oflag=direct status=none &
	dd=$!
	for i in $(seq 100); do grep -q 'fired on write' fg.err && break; sleep 0.05; done
	grep -q 'fired on write' fg.err || fail "the write's delay did not begin"
	echo crash >ctl
	wait $dd && fail "a write asleep in a delay through a crash succeeded"
	fx_down "$PWD/mp"
	cmp src before || fail "a write asleep in a delay through a crash reached the source"
	fx_fg $1 -d --fault=op=read,delay=600s "$PWD/src" "$PWD/mp"
	dd if=mp of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null &
	dd=$!
	for i in $(seq 100); do grep -q 'fired on read' fg.err && break; sleep 0.05; done
	grep -q 'fired on read' fg.err || fail "the read's delay did not begin"
	kill -TERM $FXPID
	wait_gone $FXPID 30 || fail "SIGTERM waits out a read's delay"
	wait $dd || true
}

# A flush rule fails the flushes it fires on, and no more: count=1 fails
# one fsync, the next succeeds, and the source is flushed at the end, so
# --run exits with COMMAND's status. The rule's EIO was taken for a failed
# flush of the source, which then failed every later fsync without
# flushing the source, and --run exited 1 saying "a flush of the source
# failed" though the source never had
t_fault_flush() {
	local rc=0
	mkimg src 4; : >mp
	cat >client.py <<-'EOF'
		import os, sys
		fd = os.open(sys.argv[1], os.O_RDWR)
		os.pwrite(fd, b"x" * 4096, 0)
		try:
		    os.fsync(fd)
		    sys.exit("the rule did not fail the first fsync")
		except OSError:
		    pass
		os.fsync(fd)
		os.close(fd)
	EOF
	"$FX" $1 -w --fault=op=flush,count=1 --run='"$PY" client.py "$1"' \
		"$PWD/src" "$PWD/mp" 2>run.err || rc=$?
	log "--run: exit $rc: $(cat run.err)"
	refute "a flush the rule failed is reported as the source's" grep -q 'a flush of the source failed' run.err
	eq "$rc" 0 "--run's status: one fsync failed by the rule, the next one good"
	eq "$(head -c 4096 src | tr -d x | wc -c)" 0 "the write in the source"
}

# failures FILE: one pread(2) of 4 KiB at every 4 KiB, in order: a line of
# . (read) and x (EIO)
failures() {
	"$PY" -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
out = ""
for i in range(128):
    try:
        os.pread(fd, 4096, i * 4096)
        out += "."
    except OSError:
        out += "x"
print(out)' "$1"
}

# Random failures repeat with the seed: the same reads fail twice
fault_seed() {
	local mode=$1 seed a b c
	mkimg src 4; : >mp
	for seed in 1234 1234 99; do
		fx_up $mode --fault=op=read,probability=0.3 --seed=$seed "$PWD/src" "$PWD/mp"
		failures mp >>runs
		fx_end "$PWD/mp"
	done
	{ read -r a; read -r b; read -r c; } <runs
	log "seed 1234: $a"; log "seed 1234: $b"; log "seed 99:   $c"
	case $a in *x*.*|*.*x*) ;; *) fail "probability=0.3 failed all or none: $a" ;; esac
	eq "$b" "$a" "the failures of a second run with the same seed"
	[ "$c" != "$a" ] || fail "another seed failed the same reads"
}
t_fault_seed() { fault_seed "$1"; }
t_fault_seed_user() { as_nonroot fault_seed "$1"; }

# Rules stand over a window and a snapshot: their offsets are the export's,
# a failed write reaches neither, and the source is never written
t_fault_layers() {
	local mode=$1
	mkimg src 16; cp src orig; : >mp
	head -c 8192 /dev/urandom >data
	fx_up $mode -w --offset=4M --size=8M --snapshot \
		--fault=op=read,offset=1M,length=4K --fault=op=write,offset=2M,length=1,error=EROFS \
		"$PWD/src" "$PWD/mp"
	cmp -n $MiB mp <(range orig $((4 * MiB)) $MiB) || fail "reads before the bad range"
	dd if=mp of=/dev/null bs=4k skip=256 count=1 iflag=direct status=none 2>dd.err &&
		fail "a read of the bad range (the export's 1M) succeeded"
	grep -q 'Input/output error' dd.err || fail "the reader saw: $(cat dd.err)"
	dd if=mp of=/dev/null bs=4k skip=257 count=1 iflag=direct status=none || fail "the read after it"
	put mp $((3 * MiB)) data
	cmp <(range mp $((3 * MiB)) 8192) data || fail "a write into the snapshot"
	dd if=data of=mp bs=8192 seek=256 count=1 conv=notrunc status=none 2>dd.err &&
		fail "a write over the export's 2M succeeded"
	grep -q 'Read-only file system' dd.err || fail "the writer saw: $(cat dd.err)"
	cmp <(range mp $((2 * MiB)) 8192) <(range orig $((6 * MiB)) 8192) || fail "a failed write changed the snapshot"
	fx_down "$PWD/mp"
	cmp src orig || fail "the source was written"
}

# Does a direct read of mp's block at 1 MiB fail within 5 s? (a rule sent
# through a control FIFO is taken by its thread a moment later)
block_fails_soon() {
	local i
	for i in $(seq 50); do
		dd if=mp of=/dev/null bs=4k skip=256 count=1 iflag=direct status=none 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}

# The control FIFO: mode 0600, the caller's; fault RULE, clear, an unknown
# line reported; -d names the rule that fired; the FIFO goes with the export
# A detached server's messages (here, an unknown line on its control FIFO)
# are not lost: --log=FILE; else syslog where /dev/log takes them (a
# listener of ours, over /dev in this namespace, taken again after it
# restarts); else the kernel's log, a long line in pieces it takes. Each
# tagged fuseexport[PID], the last line there even as the server exits,
# as a notice where the rest are warnings; in FILE, stamped with the local
# time.
log_says() {	# log_says FILE|kmsg PATTERN: within 30 s
	local i
	for i in $(seq 300); do
		if [ "$1" = kmsg ]; then dmesg | grep -q -- "$2" && return 0
		else grep -q -- "$2" "$1" 2>/dev/null && return 0; fi
		sleep 0.1
	done
	fail "no '$2' in $1: $(tail -n 3 "$1" 2>/dev/null)"
}
log_last() {	# the last line of FILE, less its time stamp (checked)
	local re='^[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9][-+][0-9]{4} (.*)$'
	if [[ $(tail -n 1 "$1") =~ $re ]]; then echo "${BASH_REMATCH[1]}"
	else echo "no time stamp: $(tail -n 1 "$1")"; fi
}
syslog_listener() {	# a /dev/log at dev/log, appending to syslog.txt
	local i
	"$PY" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1])
open(sys.argv[3], "w").close()
with open(sys.argv[2], "ab", buffering=0) as f:
    while True: f.write(s.recv(8192) + b"\n")' dev/log syslog.txt listening &
	LISTENER=$!
	track_pid $LISTENER
	for i in $(seq 300); do [ -e listening ] && break; sleep 0.1; done
	[ -e listening ] || fail "the syslog listener did not start"
}
log_ns() {
	local tag
	mkimg src 4; : >mp
	fx_up -w --control="$PWD/ctl" --log=fx.log "$PWD/src" "$PWD/mp"
	echo bogus-file >ctl
	log_says fx.log "control: 'bogus-file': unknown command"
	fx_down "$PWD/mp"
	eq "$(log_last fx.log)" "fuseexport[$FXPID]: $PWD/mp: the export of $PWD/src ended (unmounted), its writes flushed" \
		"the log's last line, the final status"
	# the kernel's log, with no /dev/log to take it
	if [ -e /dev/log ]; then : >nolog; mount --bind nolog /dev/log; fi
	fx_up --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	tag="fuseexport\[$FXPID\]"
	echo bogus-kmsg >ctl
	log_says kmsg "$tag: control: 'bogus-kmsg': unknown command"
	# a line the kernel takes only in pieces (a record of 1 KiB is refused)
	echo "bogus-long-$(printf %2000s | tr ' ' y)-end" >ctl
	log_says kmsg "$tag: control: 'bogus-long-yyy"
	log_says kmsg "$tag: y*-end': unknown command"
	fx_down "$PWD/mp"
	log_says kmsg "$tag: $PWD/mp: the export of $PWD/src ended (unmounted)"
	# each line at its level: the control line a warning, the end a notice
	dmesg -l warn | grep -q "$tag: control: 'bogus-kmsg'" || fail "the control line is no warning in the kernel's log"
	dmesg -l notice | grep -q "$tag: $PWD/mp: the export of $PWD/src ended (unmounted)" ||
		fail "the last line is no notice in the kernel's log: $(dmesg -x | grep "$tag: $PWD/mp")"
	# syslog: a /dev/log of ours
	mkdir dev
	cp -a /dev/null /dev/zero /dev/urandom /dev/fuse /dev/kmsg dev/
	syslog_listener
	mount --bind dev /dev
	fx_up --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	tag="<28>fuseexport\[$FXPID\]"
	echo bogus-syslog >ctl
	log_says syslog.txt "$tag: control: 'bogus-syslog': unknown command"
	# the syslog daemon restarted: a new socket at /dev/log
	kill "$LISTENER"; wait "$LISTENER" 2>/dev/null || true
	rm -f dev/log listening
	syslog_listener
	echo bogus-restarted >ctl
	log_says syslog.txt "$tag: control: 'bogus-restarted': unknown command"
	kill -TERM "$FXPID"
	wait_gone "$FXPID" || fail "server still running after SIGTERM"
	log_says syslog.txt "<29>fuseexport\[$FXPID\]: $PWD/mp: the export of $PWD/src ended (SIGTERM)$"
	refute "the kernel's log took a syslog line" eval 'dmesg | grep -q "fuseexport\[$FXPID\]: .*bogus-syslog"'
}
t_log() { in_ns log_ns; }

# The log's last line says how the export ended in every case a detached
# server lives to write it (issue 24.2): a crash on the control FIFO, and a
# failed flush too, whose line must name the end and the source's own
# error. A failed flush wrote only "SOURCE: a flush of the source failed
# (...)", with no mount point and no end, and after a write-back that
# failed with ENOSPC the cause it gave was EIO, the error every later
# flush gets once one failed.
log_end_ns() {
	local i
	mkimg src 4; : >mp
	fx_up -w --write-cache=volatile --control="$PWD/ctl" --log=fx.log "$PWD/src" "$PWD/mp"
	dd if=/dev/urandom of=mp bs=4k count=1 conv=notrunc status=none
	echo crash >ctl
	block_fails_soon || fail "no crash"
	# power is lost once: a second crash changes nothing, nor what is said
	printf 'crash torn\nbogus\n' >ctl
	for i in $(seq 100); do grep -q "'bogus'" fx.log && break; sleep 0.05; done
	fx_down "$PWD/mp"
	eq "$(log_last fx.log)" "fuseexport[$FXPID]: $PWD/mp: the export of $PWD/src ended (unmounted), crashed: the writes held unflushed were dropped" \
		"the last line after a crash, then a torn one"
	fx_up -w --write-cache=volatile --control="$PWD/ctl" --log=fx.log "$PWD/src" "$PWD/mp"
	dd if=/dev/urandom of=mp bs=4k count=8 conv=notrunc status=none
	echo crash torn >ctl
	block_fails_soon || fail "no crash"
	fx_down "$PWD/mp"
	eq "$(log_last fx.log)" "fuseexport[$FXPID]: $PWD/mp: the export of $PWD/src ended (unmounted), crashed torn: of the writes held unflushed some were written, the rest dropped" \
		"the last line after a torn crash"
	# nothing held, nothing dropped: the writes went to the source
	fx_up -w --control="$PWD/ctl" --log=fx.log "$PWD/src" "$PWD/mp"
	echo crash >ctl
	block_fails_soon || fail "no crash"
	# the data fails, stat and open still answer
	eq "$(stat -c %s mp)" $((4 * MiB)) "stat after the crash"
	refute "a write after the crash" dd if=/dev/zero of=mp bs=4k count=1 \
		oflag=direct conv=notrunc status=none
	fx_down "$PWD/mp"
	eq "$(log_last fx.log)" "fuseexport[$FXPID]: $PWD/mp: the export of $PWD/src ended (unmounted), crashed: every read, write and flush failed from then on" \
		"the last line after a crash without a volatile cache"
	# a source on a full file system: the final flush of held writes fails
	mkdir small; mount -t tmpfs -o size=2M tmpfs small
	truncate -s 64M small/src; : >small/mp; rm -f fx.log
	fx_up -w --write-cache=volatile --log=fx.log "$PWD/small/src" "$PWD/small/mp"
	dd if=/dev/urandom of=small/mp bs=1M count=4 conv=notrunc status=none
	umount "$PWD/small/mp"
	wait_gone "$FXPID" 10 || fail "server still running after umount"
	log "the log: $(cat fx.log)"
	case $(log_last fx.log) in
	"fuseexport[$FXPID]: $PWD/small/mp: the export of $PWD/small/src ended (unmounted)"*"No space left on device"*) ;;
	*) fail "the last line after a failed final flush does not say how the export ended and why (ENOSPC): $(tail -n 1 fx.log)" ;;
	esac
	# a write-back of the kernel's cache that fails, then SIGTERM
	rm -f small/src fx.log; truncate -s 64M small/src
	fx_up -w --cache=writeback --log=fx.log "$PWD/small/src" "$PWD/small/mp"
	dd if=/dev/urandom of=small/mp bs=1M count=4 conv=notrunc status=none 2>/dev/null || true
	kill -TERM "$FXPID"
	wait_gone "$FXPID" 10 || fail "server still running after SIGTERM"
	log "the log: $(cat fx.log)"
	case $(log_last fx.log) in
	"fuseexport[$FXPID]: $PWD/small/mp: the export of $PWD/small/src ended (SIGTERM)"*"No space left on device"*) ;;
	*) fail "the last line after a failed write-back does not say how the export ended and why (ENOSPC): $(tail -n 1 fx.log)" ;;
	esac
}
t_log_end() { in_ns log_end_ns; }

# the static binary: the default one made, or made again where its source
# is newer (a stale one tests old code); FUSEEXPORT_STATIC's as it is
static_binary() {
	if [ "$FXS" = "$TOP/fuseexport-static" ]; then
		(cd "$TOP" && make -s static >&2) || fail "make static"
	fi
	[ -x "$FXS" ] || fail "no static binary at $FXS"
}

# --log=FILE: a line goes into FILE in one write(2), so that servers that
# share FILE (O_APPEND) never mix their lines. The static build (musl's
# dprintf) wrote a line and its newline apart, and another server's line
# could land between them
t_log_write_once() {
	local fx fd st i
	static_binary
	mkimg src 4; : >mp
	for fx in "$FX" "$FXS"; do
		rm -f fx.log trace
		FX=$fx fx_up --control="$PWD/ctl" --log="$PWD/fx.log" "$PWD/src" "$PWD/mp"
		strace -f -qq -p "$FXPID" -o trace -e trace=write,writev,pwrite64 &
		st=$!
		for i in $(seq 100); do
			! grep -q '^TracerPid:[[:space:]]*0$' /proc/"$FXPID"/task/*/status && break
			sleep 0.05
		done
		fd=$(for i in /proc/"$FXPID"/fd/*; do [ "$(readlink "$i")" = "$PWD/fx.log" ] && echo "${i##*/}"; done; true)
		[ -n "$fd" ] || fail "$fx: no fd on fx.log"
		echo bogus-once >ctl
		log_says fx.log "bogus-once"
		fx_down "$PWD/mp"
		wait "$st" || true
		log "$fx: $(grep -E "^[0-9]+ +(writev?|pwrite64)\($fd, " trace)"
		eq "$(grep -cE "^[0-9]+ +(writev?|pwrite64)\($fd, " trace)" "$(wc -l <fx.log)" "$fx: writes to FILE, one a line"
	done
}

t_control() {
	mkimg src 4; : >mp
	fx_fg -d --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	[ -p ctl ] || fail "no FIFO at --control"
	eq "$(stat -c %a:%u ctl)" "600:$(id -u)" "the FIFO's mode and owner"
	cmp mp src || fail "reads before any rule"
	echo "fault op=read,offset=1M,length=4K" >ctl
	block_fails_soon || fail "a rule added through the FIFO did not fire"
	cmp -n $MiB mp src || fail "reads outside the rule's range"
	echo "bogus command" >ctl
	echo "fault op=read,error=EWHAT" >ctl
	echo clear >ctl
	for i in $(seq 50); do cmp -s mp src && break; sleep 0.1; done
	cmp mp src || fail "reads after clear"
	grep -q "^fuseexport: control: 'bogus command': unknown command" fg.err ||
		fail "the unknown line was not reported: $(cat fg.err)"
	grep -q "^fuseexport: control: fault op=read,error=EWHAT: error=EWHAT: not an errno name" fg.err ||
		fail "the bad rule was not reported: $(grep control fg.err)"
	grep -q '^fuseexport: fault rule 1 (op=read,offset=1M,length=4K) fired on read 1048576+4096: error EIO' fg.err ||
		fail "-d does not name the rule that fired: $(grep fault fg.err)"
	grep -q '^fuseexport: passthrough off (fault rules' fg.err || fail "passthrough on with --control"
	fx_down "$PWD/mp"
	refute "the FIFO is left after the export ended" [ -e ctl ]
	# its end removes its own FIFO, nothing else found at the path since:
	# another export's FIFO, or a user's file
	mkimg src2 4; : >mp2
	fx_up --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	local first=$FXPID
	rm ctl
	fx_up --control="$PWD/ctl" "$PWD/src2" "$PWD/mp2"
	FXPID=$first; fx_down "$PWD/mp"
	[ -p ctl ] || fail "an export's end removed another's FIFO at its path"
	rm ctl; echo precious >ctl
	fx_down "$PWD/mp2"
	eq "$(cat ctl)" precious "a file put where the FIFO was, after the export"
	return 0
}

# The control FIFO's line limit: a line over 4095 bytes is dropped whole,
# up to its newline, and said so; its tail is never run as a line of its
# own (a crash there crashed the export). A line of exactly 4095 is taken.
# A line with a NUL byte is dropped, not run up to the NUL.
t_control_long() {
	mkimg src 4; : >mp
	fx_fg --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	printf 'fault op=read,offset=0,length=1%8000s\n' crash >ctl
	printf 'crash\0 torn\n' >ctl	# not a crash: a line with a NUL
	printf '%4095s\n' "fault op=read,offset=1M,length=4K" >ctl
	block_fails_soon || fail "a line of 4095 bytes was not taken"
	dd if=mp of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null ||
		fail "a read at 0 fails: the long line's tail (crash) or head (its rule) was run"
	cmp -n $MiB mp src || fail "reads before the rule's range"
	grep -q '^fuseexport: control: a line over 4095 bytes: dropped whole$' fg.err ||
		fail "the long line was not reported: $(cat fg.err)"
	grep -q '^fuseexport: control: a line with a NUL byte: dropped$' fg.err ||
		fail "the line with a NUL was not reported: $(cat fg.err)"
	eq "$(grep -c control fg.err)" 2 "lines about the control FIFO"
	fx_down "$PWD/mp"
}

# cache_client MOUNTPOINT SOURCE CONTROL CRASH: through the export, one
# open file: writes, a punch, a shrink and regrowth, each seen at once and
# kept from the source until fsync; then more of them and CRASH ("crash"
# or "crash torn") on the FIFO, once they are all in
cache_client() {
	PYTHONPATH="$TOP/tests" "$PY" - "$@" <<'PYEOF'
import ctypes, fxio, os, random, sys
mp, src, ctl, crash = sys.argv[1:]
M = 1 << 20
libc = ctypes.CDLL(None, use_errno=True)
def fallocate(fd, mode, pos, n):
    if libc.fallocate(fd, mode, ctypes.c_int64(pos), ctypes.c_int64(n)) < 0:
        raise OSError(ctypes.get_errno(), "fallocate")
def source(): return open(src, "rb").read()
orig = source()
fd = os.open(mp, os.O_RDWR)
a = random.Random(1).randbytes(10000)   # the same in every run
os.pwrite(fd, a, 1000)
assert os.pread(fd, 10000, 1000) == a, "a write is not read back"
fallocate(fd, 3, M + 100, 70000)             # punch hole, keep size
assert os.pread(fd, 70000, M + 100) == bytes(70000), "a punch is not zeros"
os.ftruncate(fd, 6 * M); os.ftruncate(fd, 8 * M)
assert os.pread(fd, 2 * M, 6 * M) == bytes(2 * M), "a shrunk tail regrown is not zeros"
assert source() == orig, "the source changed before fsync"
os.fsync(fd)
want = bytearray(orig)
want[1000:11000] = a
want[M + 100:M + 70100] = bytes(70000)
want[6 * M:] = bytes(2 * M)
assert source() == bytes(want), "the source after fsync"
b = bytes([0x5a]) * 65536
os.pwrite(fd, b, 2 * M + 100)
fallocate(fd, 0x10 | 1, 3 * M, 8192)          # zero range
os.ftruncate(fd, 7 * M)
assert os.fstat(fd).st_size == 7 * M
fxio.crash(ctl, fd, crash)
open("flushed", "wb").write(want)
PYEOF
}

# The volatile cache itself: held until fsync, seen at once; a crash drops
# what is held, size changes included; crash torn keeps a seeded subset of
# its sectors, the same one for the same seed
# A crash on the control FIFO: pages a client mapped before it are dropped
# with the rest (the kernel told), so the mapping faults (SIGBUS) as every
# read fails
t_cache_crash_mapped() {
	mkimg src 4; : >mp
	fx_up $1 -w --write-cache=volatile --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	"$PY" - mp ctl <<-'EOF' || fail "the mapping after the crash"
	import mmap, os, signal, sys, time
	fd = os.open(sys.argv[1], os.O_RDONLY)
	m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
	assert m[0:4096] == os.pread(fd, 4096, 0)
	with open(sys.argv[2], "w") as f: f.write("crash\n")
	pid = os.fork()
	if pid == 0:
	    for i in range(50):
	        m[0:4096]
	        time.sleep(0.1)
	    os._exit(0)
	_, status = os.waitpid(pid, 0)
	if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGBUS):
	    sys.exit("the mapping still reads what was cached before the crash")
	EOF
	fx_down "$PWD/mp"
}

t_cache_sectors() {
	local mode=$1 run
	mkimg src 8; cp src orig; : >mp
	fx_up $mode -w --write-cache=volatile --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	cache_client "$PWD/mp" "$PWD/src" "$PWD/ctl" crash || fail "the client"
	fx_down "$PWD/mp"
	eq "$(size_of src)" $((8 * MiB)) "the source's size after a crash dropped a shrink"
	cmp src flushed || fail "the source holds more than was flushed before the crash"
	for run in 1 2; do
		cp orig src
		fx_up $mode -w --write-cache=volatile --control="$PWD/ctl" --seed=42 "$PWD/src" "$PWD/mp"
		cache_client "$PWD/mp" "$PWD/src" "$PWD/ctl" "crash torn" || fail "the client, torn run $run"
		fx_down "$PWD/mp"
		cp src torn$run
	done
	cmp torn1 torn2 || fail "crash torn kept other sectors with the same seed"
	"$PY" - <<'PYEOF' || fail "crash torn"
import sys
M = 1 << 20
torn, flushed = open("torn1", "rb").read(), open("flushed", "rb").read()
new = bytearray(flushed)
new[2 * M + 100:2 * M + 100 + 65536] = bytes([0x5a]) * 65536
new[3 * M:3 * M + 8192] = bytes(8192)
kept = dropped = 0
for s in range(0, len(torn), 512):
    t = torn[s:s + 512]
    if t == flushed[s:s + 512] and t != new[s:s + 512]: dropped += 1
    elif t == new[s:s + 512] and t != flushed[s:s + 512]: kept += 1
    elif t != flushed[s:s + 512]: sys.exit("sector %d is neither before nor after" % (s // 512))
print(": crash torn kept %d sectors and dropped %d" % (kept, dropped), file=sys.stderr)
if not kept or not dropped: sys.exit("torn kept %d sectors, dropped %d" % (kept, dropped))
PYEOF
}

# -d counts what a torn crash did: on a growable export, sectors held past
# the source's end cannot be written and are dropped (it said 0 dropped)
t_cache_crash_count() {
	local i
	: >src; : >mp
	fx_fg $1 -d -g --write-cache=volatile --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	dd if=/dev/urandom of=mp bs=64k count=1 status=none
	echo "crash torn" >ctl
	for i in $(seq 100); do grep -q 'crash torn:' fg.err && break; sleep 0.05; done
	grep -q '^fuseexport: crash torn: 128 unflushed sectors dropped, 0 written$' fg.err ||
		fail "what the torn crash did: $(grep crash fg.err)"
	fx_down "$PWD/mp"
	eq "$(stat -c %s src)" 0 "the source after the crash"
}

# O_DSYNC through the volatile cache, as FUA through a disk's: written
# through at once, it survives a crash, while a plain write held beside it
# is lost. Both files stay open until the crash, and --cache=none: the
# page cache would follow the write with an FSYNC.
t_cache_dsync() {
	mkimg src 8; cp src orig; : >mp
	fx_up $1 --cache=none -w --write-cache=volatile --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	PYTHONPATH="$TOP/tests" "$PY" - "$PWD/mp" "$PWD/src" "$PWD/ctl" <<'PYEOF' || fail "the client"
import fxio, os, sys
mp, src, ctl = sys.argv[1:]
M = 1 << 20
plain, dsync = os.open(mp, os.O_RDWR), os.open(mp, os.O_WRONLY | os.O_DSYNC)
a, b = os.urandom(8192), os.urandom(12345)
os.pwrite(plain, a, M)
os.pwrite(dsync, b, 3 * M + 100)
assert os.pread(plain, 8192, M) == a, "the plain write is not read back"
assert os.pread(plain, 12345, 3 * M + 100) == b, "the O_DSYNC write is not read back"
want = bytearray(open("orig", "rb").read())
want[3 * M + 100:3 * M + 100 + 12345] = b
assert open(src, "rb").read() == want, "the source does not hold the O_DSYNC write alone"
fxio.crash(ctl, plain)
open("want", "wb").write(want)
PYEOF
	fx_down "$PWD/mp"
	cmp src want || fail "the source after the crash"
}

# A close is no flush under the volatile cache, as a program closing a
# file empties no disk's cache: what was fsync'ed survives a crash, what
# was written and closed without one (a shell's redirection, a closed dup)
# is lost
t_cache_close() {
	mkimg src 4; cp src orig; : >mp
	fx_up $1 -w --write-cache=volatile --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	head -c 65536 /dev/urandom >data
	put mp $MiB data conv=notrunc,fsync
	exec 3<>mp; printf X >&3; exec 3>&-
	"$PY" - mp <<-'EOF' || fail "write and close a dup"
	import os, sys
	fd = os.open(sys.argv[1], os.O_RDWR)
	os.pwrite(fd, b"Y" * 4096, 2 << 20)
	os.close(os.dup(fd))
	os.close(fd)
	EOF
	eq "$(head -c 1 mp)" X "the closed write read back before the crash"
	cmp -s <(range src 0 1) <(range orig 0 1) || fail "a close wrote the source through the volatile cache"
	echo crash >ctl
	wait_crashed mp
	fx_down "$PWD/mp"
	cmp <(range src $MiB 65536) data || fail "the fsync'ed write after the crash"
	cmp <(range src 0 1) <(range orig 0 1) || fail "a write closed without fsync survived the crash"
	cmp <(range src $((2 * MiB)) 4096) <(range orig $((2 * MiB)) 4096) ||
		fail "a write whose dup was closed survived the crash"
}

# SQLite on a volatile export: transactions commit, the disk crashes
# mid-run; exported again, the database is intact and holds every
# transaction that committed before the crash
cache_sqlite() {
	local mode=$1 i last count writer
	: >src; : >mp
	fx_up $mode -g --write-cache=volatile --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	sqlite3 mp "create table t(n integer primary key, v blob);" || fail "create table"
	for i in $(seq 100000); do
		echo "begin; insert into t values($i, randomblob(3000)); commit;"
		echo ".print $i"
	done | sqlite3 -bail mp >committed 2>sqlite.err &
	writer=$!
	for i in $(seq 100); do
		[ "$(size_of src)" -gt 300000 ] && break
		sleep 0.05
	done
	echo crash >ctl
	wait_crashed mp
	refute "sqlite3 went on after the crash" wait $writer
	log "sqlite3 after the crash: $(cat sqlite.err)"
	last=$(tail -n1 committed)
	[ -n "$last" ] && [ "$last" -ge 10 ] || fail "only ${last:-no} transactions before the crash"
	fx_end "$PWD/mp"
	refute "the FIFO is left after the export ended" [ -e ctl ]
	fx_up $mode -g "$PWD/src" "$PWD/mp"
	eq "$(sqlite3 mp 'pragma integrity_check')" ok "integrity_check after the crash"
	count=$(sqlite3 mp "select count(*) from t where n <= $last")
	log "$last transactions committed before the crash, $count found"
	eq "$count" "$last" "transactions found of those committed"
	count=$(sqlite3 mp "select count(*) from t")
	[ "$count" -le $((last + 1)) ] || fail "$count rows, $last committed"
	fx_end "$PWD/mp"
}
t_cache_sqlite() { cache_sqlite "$1"; }
t_cache_sqlite_user() { as_nonroot cache_sqlite "$1"; }

# ext4 on a loop device over a volatile export: files fsync'ed, others not,
# a crash; exported again, the journal replays, every fsync'ed file is
# intact and e2fsck finds nothing
t_cache_ext4() {
	local mode=$1 loop i torn=${2:-}
	truncate -s 64M src; : >mp; mkdir fs
	mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 src || fail "mkfs.ext4"
	fx_up $mode -w --write-cache=volatile --control="$PWD/ctl" --seed=$RANDOM "$PWD/src" "$PWD/mp"
	loop=$(losetup -f --show mp) || fail "losetup over the export"
	track_loop "$loop"; track_mount "$PWD/fs"
	mount "$loop" fs || fail "mount the ext4"
	for i in $(seq 20); do
		head -c $((i * 8192)) /dev/urandom >data$i
		dd if=data$i of=fs/f$i bs=64k conv=fsync status=none || fail "dd conv=fsync"
	done
	for i in $(seq 10); do head -c 100000 /dev/urandom >fs/u$i; done
	echo "crash$torn" >ctl
	wait_crashed mp
	umount fs 2>&1 || fail "umount the ext4 after the crash"
	loop_off "$loop"
	fx_down "$PWD/mp"
	refute "the FIFO is left after the export ended" [ -e ctl ]
	fx_up $mode -w "$PWD/src" "$PWD/mp"
	loop=$(losetup -f --show mp) || fail "losetup again"
	track_loop "$loop"
	mount "$loop" fs || fail "mount after the crash (journal replay)"
	for i in $(seq 20); do cmp fs/f$i data$i || fail "fsync'ed file f$i"; done
	log "unsynced files that survived: $(ls fs | grep -c '^u' || true) of 10"
	umount fs; loop_off "$loop"
	e2fsck -fn mp >fsck.out 2>&1 || fail "e2fsck -fn: $(cat fsck.out)"
	fx_down "$PWD/mp"
}

# ---------------------------------------------------------------------------
# The rescue shell: busybox, the static binary, /dev/fuse, /proc, the image

rescue_ns() {
	local r=$1
	mount -t proc proc "$r/proc"
	chroot "$r" /bin/busybox sh -c '
		set -e
		/bin/busybox --install -s /bin
		export PATH=/bin
		/fuseexport -w /img /mp
		grep -q " /mp fuse" /proc/mounts
		[ "$(stat -c %s /mp)" = 16777216 ]
		cmp /mp /orig
		dd if=/data of=/mp bs=64k seek=16 conv=notrunc,fsync 2>/dev/null
		dd if=/mp bs=64k skip=16 count=16 2>/dev/null | cmp - /data
		umount /mp
		if grep -q " /mp " /proc/mounts; then echo still mounted; exit 1; fi
		/fuseexport /img /mp
		cmp /mp /img
		dd if=/mp bs=64k skip=16 count=16 2>/dev/null | cmp - /data
		umount /mp
	' || fail "the busybox script in the chroot"
	umount "$r/proc"
}

t_rescue() {
	local r=$PWD/root
	static_binary
	ldd "$FXS" 2>&1 | grep -q 'not a dynamic executable' || fail "$FXS is not static: $(ldd "$FXS" 2>&1)"
	mkdir -p "$r/bin" "$r/dev" "$r/proc"
	cp /bin/busybox "$r/bin/busybox"
	cp "$FXS" "$r/fuseexport"
	mknod "$r/dev/fuse" c 10 229
	mknod "$r/dev/null" c 1 3
	mkimg "$r/img" 16
	cp "$r/img" "$r/orig"; cp "$r/img" expected
	head -c $MiB /dev/urandom >"$r/data"
	put expected $MiB "$r/data"
	: >"$r/mp"
	in_ns rescue_ns "$r"
	cmp "$r/img" expected || fail "image after the rescue shell"
}

# ---------------------------------------------------------------------------
# Life cycle

t_help() {
	"$FX" --help >out 2>err || fail "--help exit $?"
	refute "--help wrote to stderr" [ -s err ]
	grep -q 'usage: fuseexport' out || fail "--help: no usage line"
	for o in --writable --growable --foreground --debug --queues --allow-other --partition --partitions \
		--snapshot --commit --help --version; do
		grep -q -- "$o" out || fail "--help does not mention $o"
	done
	"$FX" -h >out2 || fail "-h exit $?"
	cmp out out2 || fail "-h differs from --help"
}

t_version() {
	"$FX" --version >out 2>err || fail "--version exit $?"
	refute "--version wrote to stderr" [ -s err ]
	grep -q '^fuseexport [0-9]' out || fail "--version: $(cat out)"
	"$FX" -V >out2 || fail "-V exit $?"
	cmp out out2 || fail "-V differs from --version"
}

t_live_on_return() {
	local i
	mkimg src 64; : >mp
	for i in 1 2 3; do
		"$FX" "$PWD/src" "$PWD/mp" 2>err || fail "exit $?: $(cat err)"
		track_mount "$PWD/mp"
		eq "$(stat -c %s mp)" $((64 * MiB)) "size seen right after return"
		FXPID=$(fx_pid "$PWD/mp"); track_pid "$FXPID"
		[ -n "$FXPID" ] || fail "no server"
		eq "$(awk '{ print $5 }' /proc/$FXPID/stat)" "$FXPID" "server session id (setsid)"
		eq "$(readlink /proc/$FXPID/fd/0)" /dev/null "server stdin"
		eq "$(readlink /proc/$FXPID/fd/1)" /dev/null "server stdout"
		case $(readlink /proc/$FXPID/fd/2) in	# the log (t_log)
		pipe:*) ;; *) fail "server stderr: $(readlink /proc/$FXPID/fd/2), not the log's pipe" ;;
		esac
		fx_down "$PWD/mp"
	done
}

t_signal() {
	local sig=$1 rc
	mkimg src 16; cp src expected; : >mp
	fx_fg -w "$PWD/src" "$PWD/mp"
	head -c $MiB /dev/urandom >data
	put mp $MiB data; put expected $MiB data
	kill -"$sig" "$FXPID"
	wait_gone "$FXPID" 10 || fail "server still running 10s after SIG$sig"
	rc=0; wait "$FXPID" || rc=$?
	eq "$rc" 0 "exit status after SIG$sig"
	refute "still mounted after SIG$sig" mounted "$PWD/mp"
	cmp src expected || fail "source after SIG$sig"
	[ -s "$TESTDIR/fg.err" ] && log "stderr: $(cat "$TESTDIR/fg.err")"
	return 0
}

# --run=COMMAND: the export lives while COMMAND runs; fuseexport exits with
# COMMAND's status and leaves nothing mounted or running (run_gone)
run_gone() {
	refute "still mounted after --run" mounted "$1"
	[ -z "$(fx_pid "$1")" ] || fail "a server is left after --run: $(fx_pid "$1")"
}

t_run() {
	local rc
	mkimg src 64; : >mp
	track_mount "$PWD/mp"
	"$FX" -w --run='mkfs.ext4 -q -F "$1" && e2fsck -fn "$FUSEEXPORT_FILE" >/dev/null 2>&1' \
		"$PWD/src" "$PWD/mp" 2>err || fail "mkfs.ext4 + e2fsck under --run: exit $?: $(cat err)"
	[ ! -s err ] || fail "stderr: $(cat err)"
	run_gone "$PWD/mp"
	e2fsck -fn src >/dev/null 2>&1 || fail "e2fsck of the source after --run"
	"$FX" --run="cmp \"\$1\" '$PWD/src'" "$PWD/src" "$PWD/mp" || fail "cmp under --run: exit $?"
	rc=0; "$FX" --run='exit 3' "$PWD/src" "$PWD/mp" || rc=$?
	eq "$rc" 3 "status of --run='exit 3'"
	rc=0; "$FX" --run='kill -KILL $$' "$PWD/src" "$PWD/mp" 2>err || rc=$?
	eq "$rc" 137 "status of a COMMAND killed by SIGKILL"
	run_gone "$PWD/mp"
	# COMMAND starts with SIGPIPE as a shell has it: cat ends quietly
	# when head has had enough (ignored, it failed with EPIPE)
	"$FX" --run='cat "$1" | head -c 1 >/dev/null' "$PWD/src" "$PWD/mp" 2>err ||
		fail "cat | head under --run: exit $?"
	[ ! -s err ] || fail "cat | head under --run: $(cat err)"
	run_gone "$PWD/mp"
}

# SIGTERM to fuseexport reaches COMMAND; the export ends after it
t_run_signal() {
	local pid rc=0 i
	mkimg src 16; : >mp
	track_mount "$PWD/mp"
	env --default-signal=TERM "$FX" -w --run="trap 'echo TERM >got; exit 7' TERM; : >up; while :; do sleep 0.1; done" \
		"$PWD/src" "$PWD/mp" 2>err & pid=$!
	track_pid "$pid"
	for i in $(seq 100); do [ -e up ] && break; sleep 0.1; done
	[ -e up ] || fail "COMMAND did not start: $(cat err)"
	fuse_mounted "$PWD/mp" || fail "not mounted while COMMAND runs"
	kill -TERM "$pid"
	wait "$pid" || rc=$?
	eq "$rc" 7 "fuseexport's status after SIGTERM (COMMAND's trap exits 7)"
	eq "$(cat got)" TERM "what COMMAND's trap saw"
	run_gone "$PWD/mp"
}

# An export that dies under COMMAND (its server killed) fails COMMAND's
# reads at once and fuseexport with one line, and leaves nothing mounted,
# nor the --control FIFO the server would have removed
t_run_dies() {
	local rc=0
	mkimg src 16; : >mp
	track_mount "$PWD/mp"
	"$FX" --control=ctl --run='pkill -KILL -P $PPID "^fuseexport"; sleep 0.5; cat "$1" >/dev/null 2>&1 && : >read-ok; exit 0' \
		"$PWD/src" "$PWD/mp" 2>err || rc=$?
	eq "$rc" 1 "status when the export died under COMMAND"
	refute "a read of the dead export succeeded" [ -e read-ok ]
	eq "$(wc -l <err)" 1 "lines said"
	grep -q "died under --run" err || fail "message: $(cat err)"
	run_gone "$PWD/mp"
	refute "the --control FIFO is left after the export died" [ -e ctl ]
}

# without root (through fusermount3): writes through $1 reach the source
run_user() {
	mkimg src 8; : >mp
	"$FX" -w --run='cmp "$1" src && printf hello | dd of="$1" conv=notrunc status=none' \
		"$PWD/src" "$PWD/mp" || fail "--run as a user: exit $?"
	run_gone "$PWD/mp"
	eq "$(head -c 5 src)" hello "the source's first bytes after --run"
}
t_run_user() { as_nonroot run_user; }

t_signal_busy() {
	local cpid rc
	mkimg src 16; : >mp
	fx_fg -w "$PWD/src" "$PWD/mp"
	"$PY" -c 'import sys, time; f = open(sys.argv[1], "rb"); f.read(4096); time.sleep(2); f.read(4096)' mp & cpid=$!
	sleep 0.5
	kill -TERM "$FXPID"
	sleep 0.5
	refute "still mounted after SIGTERM with a client holding the export open" mounted "$PWD/mp"
	wait "$cpid" || fail "the client holding the export open failed"
	wait_gone "$FXPID" 10 || fail "server still running 10s after SIGTERM and its last client's close"
	rc=0; wait "$FXPID" || rc=$?
	eq "$rc" 0 "exit status"
}

t_signal_detached() {
	mkimg src 16; : >mp
	fx_up "$PWD/src" "$PWD/mp"
	kill -TERM "$FXPID"
	wait_gone "$FXPID" 10 || fail "detached server still running 10s after SIGTERM"
	refute "still mounted after SIGTERM" mounted "$PWD/mp"
	return 0
}

t_umount_exits() {
	mkimg src 16; : >mp
	fx_fg -q 4 "$PWD/src" "$PWD/mp"
	cat mp >/dev/null
	fx_down "$PWD/mp"
	fx_up -q 4 "$PWD/src" "$PWD/mp"
	umount -l "$PWD/mp" || fail "umount -l"
	wait_gone "$FXPID" 10 || fail "server still running after umount -l"
}

t_busy_umount() {
	local cpid i
	mkimg src 16; : >mp
	fx_fg "$PWD/src" "$PWD/mp"
	sleep 30 <mp & cpid=$!
	for i in $(seq 100); do		# the shell has opened mp for sleep
		[ "$(readlink "/proc/$cpid/fd/0")" = "$PWD/mp" ] && break
		sleep 0.1
	done
	refute "umount of an export held open succeeded" umount "$PWD/mp" 2>/dev/null
	[ -d /proc/$FXPID ] || fail "server exited after a failed umount"
	cmp src mp || fail "still serving"
	kill $cpid; wait $cpid 2>/dev/null || :
	fx_down "$PWD/mp"
}

t_debug() {
	mkimg src 4; : >mp
	"$FX" -d --passthrough=off "$PWD/src" "$PWD/mp" 2>dbg &
	FXPID=$!; track_pid $FXPID; track_mount "$PWD/mp"
	for i in $(seq 100); do fuse_mounted "$PWD/mp" && break; sleep 0.1; done
	fuse_mounted "$PWD/mp" || fail "-d did not come up: $(cat dbg)"
	[ -d /proc/$FXPID ] || fail "-d did not stay in the foreground"
	cat mp >/dev/null
	stat mp >/dev/null
	umount "$PWD/mp"
	wait_gone $FXPID 10 || fail "-d server still running after umount"
	wait $FXPID || fail "-d exit status $?"
	head -n 20 dbg >&2
	[ "$(wc -l <dbg)" -ge 3 ] || fail "-d printed $(wc -l <dbg) lines"
	grep -q '^fuseexport: READ #' dbg || fail "-d names no READ request"
	grep -q '^fuseexport: INIT #' dbg || fail "-d names no INIT request"
}

# passthrough: with it, reads (and a growable export's writes) never reach the
# server, as -d shows; where it cannot be had, auto says why and on refuses.
# Read-only and growable exports pass through; a writable fixed-size one
# does not (its writes must reach the server, and a file that passes reads
# through but not writes is not coherent for splice and mmap): on refuses
# it, auto serves it on the /dev/fuse path.
t_passthrough() {
	local how reqs
	mkimg src 16; : >mp
	for how in "-g" ""; do
		"$FX" -d --passthrough=on $how "$PWD/src" "$PWD/mp" 2>dbg &
		FXPID=$!; track_pid $FXPID; track_mount "$PWD/mp"
		for i in $(seq 100); do fuse_mounted "$PWD/mp" && break; sleep 0.1; done
		grep -q "^fuseexport: passthrough on" dbg || fail "[$how] -d says: $(head -3 dbg)"
		cmp src mp || fail "[$how] cmp"
		[ -n "$how" ] && dd if=/dev/urandom of=mp bs=64k count=4 conv=notrunc status=none
		[ "$how" = -g ] && dd if=/dev/zero of=mp bs=1M seek=16 count=1 conv=notrunc status=none
		cmp src mp || fail "[$how] cmp after writes"
		umount "$PWD/mp"; wait $FXPID || fail "[$how] exit status $?"
		reqs=$(grep -c '^fuseexport: READ #' dbg || true)
		eq "$reqs" 0 "[$how] READ requests the server saw"
		reqs=$(grep -c '^fuseexport: WRITE #' dbg || true)
		eq "$reqs" 0 "[$how] WRITE requests the server saw"
	done
	eq "$(stat -c %s src)" $((17 * MiB)) "size after the growable export's write"
	# -w: on refuses, before mounting anything
	timeout 20 "$FX" --passthrough=on -w "$PWD/src" "$PWD/mp" 2>err &&
		{ track_pid "$(fx_pid "$PWD/mp")"; fail "--passthrough=on accepted -w"; }
	cat err >&2
	eq "$(wc -l <err)" 1 "lines of the refusal of -w"
	grep -Eq '^fuseexport: .+: .+' err || fail "refusal of -w: $(cat err)"
	refute "mounted after refusing --passthrough=on -w" mounted "$PWD/mp"
	# -w: auto serves reads and writes on the /dev/fuse path
	"$FX" -d --passthrough=auto -w "$PWD/src" "$PWD/mp" 2>dbg &
	FXPID=$!; track_pid $FXPID
	for i in $(seq 100); do fuse_mounted "$PWD/mp" && break; sleep 0.1; done
	cmp src mp || fail "[-w auto] cmp"
	dd if=/dev/urandom of=mp bs=64k count=4 conv=notrunc status=none
	cmp src mp || fail "[-w auto] cmp after writes"
	umount "$PWD/mp"; wait $FXPID || fail "[-w auto] exit status $?"
	grep -q '^fuseexport: READ #' dbg || fail "-w with auto: no READ reached the server (passed through)"
	grep -q '^fuseexport: WRITE #' dbg || fail "-w with auto: no WRITE reached the server"
	# off: every read comes to the server
	"$FX" -d --passthrough=off "$PWD/src" "$PWD/mp" 2>dbg &
	FXPID=$!; track_pid $FXPID
	for i in $(seq 100); do fuse_mounted "$PWD/mp" && break; sleep 0.1; done
	cmp src mp || fail "cmp with passthrough off"
	umount "$PWD/mp"; wait $FXPID
	grep -q '^fuseexport: passthrough off' dbg || fail "-d does not say passthrough is off"
	grep -q '^fuseexport: READ #' dbg || fail "no READ reached the server with passthrough off"
	# a window cannot pass through: on refuses, auto falls back
	refute "on accepted a window" "$FX" --passthrough=on --size=1M "$PWD/src" "$PWD/mp" 2>err
	grep -q "passthrough=on: " err || fail "refusal: $(cat err)"
	eq "$(wc -l <err)" 1 "lines of the refusal"
	refute "mounted after a refusal" mounted "$PWD/mp"
	return 0
}

# usage and version that cannot be written are a failure, said on stderr
t_help_full() {
	local o rc
	for o in --help --version; do
		rc=0; "$FX" $o >/dev/full 2>err || rc=$?
		[ $rc -ne 0 ] || fail "$o >/dev/full exited 0"
		eq "$(wc -l <err)" 1 "$o >/dev/full: stderr lines"
		grep -q '^fuseexport: ' err || fail "$o >/dev/full: message: $(cat err)"
	done
}

# up_or_refused RC ERRFILE MOUNTPOINT SERVER_PID: a start either failed
# cleanly (one line, nothing mounted, no server) or made a working export
up_or_refused() {
	local rc=$1 err=$2 mp=$3 pid=$4 what=$5
	if [ "$rc" -ne 0 ]; then
		refute "$what: exit $rc, yet $mp is mounted: $(cat "$err")" mounted "$mp"
		eq "$(wc -l <"$err")" 1 "$what: stderr lines"
		grep -Eq '^fuseexport: .+: .+' "$err" || fail "$what: message: $(cat "$err")"
		[ -z "$pid" ] || wait_gone "$pid" 5 || fail "$what: a server is left running"
		return 1
	fi
	return 0
}

# A start that fails after mounting (a queue's /dev/fuse clone refused by
# ulimit -n) leaves nothing mounted: detached, and in the foreground
t_start_fails() {
	local n rc pid i
	mkimg src 8; : >mp
	for n in 4 5 6 7 8 9 10 11 12; do
		rc=0; (ulimit -n $n && exec "$FX" -q 4 "$PWD/src" "$PWD/mp") 2>err || rc=$?
		track_mount "$PWD/mp"
		pid=$(fx_pid "$PWD/mp"); [ -z "$pid" ] || track_pid "$pid"
		log "ulimit -n $n, detached: exit $rc: $(cat err)"
		if up_or_refused $rc err "$PWD/mp" "$pid" "ulimit -n $n, -q 4"; then
			fuse_mounted "$PWD/mp" || fail "ulimit -n $n: exit 0, nothing mounted"
			cmp src mp || fail "ulimit -n $n: the export does not work"
			sleep 0.2
			fuse_mounted "$PWD/mp" && [ -d /proc/$pid ] ||
				fail "ulimit -n $n: exit 0 and the export worked, then it went away: $(cat err)"
			FXPID=$pid fx_down "$PWD/mp"
		fi
		(ulimit -n $n && exec env --default-signal=INT,TERM,HUP "$FX" -f -q 4 "$PWD/src" "$PWD/mp") 2>err &
		pid=$!; track_pid $pid
		for i in $(seq 100); do
			[ -d /proc/$pid ] || break
			fuse_mounted "$PWD/mp" && break
			sleep 0.1
		done
		if fuse_mounted "$PWD/mp" && [ -d /proc/$pid ]; then
			cmp src mp || fail "ulimit -n $n, -f: mounted, and the export does not work: $(cat err)"
			FXPID=$pid fx_down "$PWD/mp"
		else
			rc=0; wait $pid || rc=$?
			log "ulimit -n $n, -f: exit $rc: $(cat err)"
			[ $rc -ne 0 ] || fail "ulimit -n $n, -f: exit 0 without an export"
			refute "unreachable" up_or_refused $rc err "$PWD/mp" "" "ulimit -n $n, -f -q 4"
		fi
	done
	return 0
}

# -d whose stderr goes to a pipe that closes (| head): the export goes on
t_debug_pipe() {
	local i
	mkimg src 8; : >mp
	( "$FX" -d "$PWD/src" "$PWD/mp" 2>&1 | { head -n 1 >head.out; : >head.done; } ) &
	track_mount "$PWD/mp"
	for i in $(seq 100); do fuse_mounted "$PWD/mp" && break; sleep 0.1; done
	fuse_mounted "$PWD/mp" || fail "-d | head: no export"
	FXPID=$(fx_pid "$PWD/mp"); track_pid "$FXPID"
	stat mp >/dev/null
	for i in $(seq 50); do [ -e head.done ] && break; sleep 0.1; done
	[ -e head.done ] || fail "head -n 1 did not finish"
	log "head: $(cat head.out)"
	stat mp >/dev/null || fail "stat after the pipe closed"
	cmp src mp || fail "the export after its stderr pipe closed"
	cmp src mp || fail "the export after its stderr pipe closed, again"
	[ -d /proc/$FXPID ] || fail "server died"
	umount "$PWD/mp" || fail "umount"
	wait_gone "$FXPID" 10 || fail "server still running after umount"
	wait
}

# Without root, a start that fails after fusermount3 mounted leaves nothing
# mounted: /dev/fuse the user may not open (0600 root), and queue clones
# refused by ulimit -n
nonroot_fail_ns() {
	local rc n pid
	mknod fuse c 10 229; chmod 600 fuse; mount --bind fuse /dev/fuse
	mkdir u; mkimg u/src 8; : >u/mp; chown -R 65534:65534 u
	rc=0; as_user timeout 20 "$FX" -f -q 2 "$PWD/u/src" "$PWD/u/mp" 2>err || rc=$?
	pid=$(fx_pid "$PWD/u/mp"); [ -z "$pid" ] || track_pid "$pid"
	[ $rc -ne 124 ] || fail "-f -q 2 with a 0600 /dev/fuse hangs"
	[ $rc -ne 0 ] || fail "-f -q 2 with a 0600 /dev/fuse exited 0"
	refute "unreachable" up_or_refused $rc err "$PWD/u/mp" "$pid" "-f -q 2, /dev/fuse 0600"
	rc=0; as_user timeout 20 "$FX" "$PWD/u/src" "$PWD/u/mp" 2>err || rc=$?
	pid=$(fx_pid "$PWD/u/mp"); [ -z "$pid" ] || track_pid "$pid"
	log "/dev/fuse 0600, no -q: exit $rc: $(cat err)"
	if up_or_refused $rc err "$PWD/u/mp" "$pid" "/dev/fuse 0600, no -q"; then
		as_user cmp u/mp u/src || fail "/dev/fuse 0600: exported, and the export does not work"
		as_user fusermount3 -u "$PWD/u/mp" || fail "fusermount3 -u"
		wait_gone "$pid" 10 || fail "server still running after fusermount3 -u"
	fi
	umount /dev/fuse; chmod 666 fuse; mount --bind fuse /dev/fuse
	for n in 10 12 14 16 18 20; do
		rc=0; (ulimit -n $n && exec setpriv --reuid=65534 --regid=65534 --clear-groups \
			"$FX" -q 16 "$PWD/u/src" "$PWD/u/mp") 2>err || rc=$?
		pid=$(fx_pid "$PWD/u/mp"); [ -z "$pid" ] || track_pid "$pid"
		log "ulimit -n $n, -q 16: exit $rc: $(cat err)"
		if up_or_refused $rc err "$PWD/u/mp" "$pid" "ulimit -n $n, -q 16"; then
			fuse_mounted "$PWD/u/mp" || fail "ulimit -n $n: exit 0, nothing mounted"
			as_user cmp u/mp u/src || fail "ulimit -n $n: exit 0, and the export does not work"
			sleep 0.2
			fuse_mounted "$PWD/u/mp" && [ -d /proc/$pid ] ||
				fail "ulimit -n $n: exit 0 and the export worked, then it went away: $(cat err)"
			as_user fusermount3 -u "$PWD/u/mp" || fail "fusermount3 -u"
			wait_gone "$pid" 10 || fail "server still running after fusermount3 -u"
		fi
	done
	return 0
}
t_nonroot_fail() { in_ns nonroot_fail_ns; }

# Without root, a source path whose escaped form overflows fusermount3's
# option list (every comma doubles) is refused, or mounted with all its
# options (default_permissions keeps other users out)
long_source_ns() {
	local c d i rc pid opts
	mknod fuse c 10 229; chmod 666 fuse; mount --bind fuse /dev/fuse
	c=$(head -c 200 /dev/zero | tr '\0' ,)
	d=u; for i in $(seq 12); do d=$d/$c; done
	mkdir -p "$d"; mkimg "$d/src" 4; : >u/mp; chown -R 65534:65534 u
	log "source path: ${#d} bytes, $((12 * 200)) commas"
	rc=0; as_user timeout 20 "$FX" "$PWD/$d/src" "$PWD/u/mp" 2>err || rc=$?
	[ $rc -ne 124 ] || fail "hangs"
	log "exit $rc: $(cut -c1-200 err)"
	pid=$(fx_pid "$PWD/u/mp"); [ -z "$pid" ] || track_pid "$pid"
	if up_or_refused $rc err "$PWD/u/mp" "$pid" "a source path of 2400 commas"; then
		opts=$(findmnt -n -o OPTIONS --mountpoint "$PWD/u/mp")
		log "mounted: $opts"
		grep -qw default_permissions <<<"$opts" || fail "mounted without default_permissions: $opts"
		as_user cmp u/mp "$d/src" || fail "the export"
		as_user fusermount3 -u "$PWD/u/mp" || fail "fusermount3 -u"
		wait_gone "$pid" 10 || fail "server still running after fusermount3 -u"
	fi
	return 0
}
t_long_source() { in_ns long_source_ns; }

# A 32-bit build (glibc, i686) handles offsets past 4 GiB: a 6 GiB sparse
# file and a loop device over one, written past 4 GiB through the export;
# the bytes land where they belong, and not 4 GiB lower
m32_check() { # m32_check SOURCE: export SOURCE (6 GiB) with ./fx32, write, check
	local s=$1 size=$((6 << 30)) hi=$(((9 << 29) + 4096)) end=$(((6 << 30) - MiB - 4096))
	local wrap=$(((1 << 29) + 4096))	# where 4.5 GiB + 4096 lands if offsets wrap at 32 bits
	FX=$PWD/fx32 fx_fg -w "$s" "$PWD/mp"
	eq "$(stat -c %s mp)" $size "[$s] size"
	put mp $hi pat
	put mp $end pat oflag=direct
	xio "$PWD/mp" "pwrite -S 0x33 $((5 << 30)) 64k" "fsync"
	cmp <(range mp $hi $MiB) pat || fail "[$s] read back at 4.5 GiB + 4096"
	cmp <(range mp $end $MiB) pat || fail "[$s] read back near the end"
	dd if=mp bs=4k skip=$(((end + MiB) / 4096)) iflag=direct status=none | cmp - <(head -c 4096 /dev/zero) ||
		fail "[$s] the last page (O_DIRECT)"
	zeros mp $wrap $MiB
	fio --name=m32 --filename="$PWD/mp" --rw=randwrite --bs=4k --offset=$(((5 << 30) + MiB)) --size=4M \
		--ioengine=psync --verify=crc32c --do_verify=1 --verify_fatal=1 --minimal >fio.out 2>&1 ||
		fail "[$s] fio verify past 5 GiB: $(cat fio.out)"
	fx_down "$PWD/mp"
	cmp <(range "$s" $hi $MiB) pat || fail "[$s] the source at 4.5 GiB + 4096"
	cmp <(range "$s" $end $MiB) pat || fail "[$s] the source near the end"
	cmp <(range "$s" $((5 << 30)) 65536) <(head -c 65536 /dev/zero | tr '\0' 3) || fail "[$s] the source at 5 GiB"
	zeros "$s" $wrap $MiB
	zeros "$s" $((1 << 30)) $MiB
	zeros "$s" $(((2 << 30) - MiB - 4096)) $MiB
}

t_m32() {
	local loop
	# i686-linux-gnu-gcc, static: cc -m32 wants gcc-multilib, which conflicts
	# with every cross gcc (make static ARCH=...). Where the kernel runs no
	# 32-bit binary (ia32 emulation off: "Exec format error"), qemu-i386 runs
	# it in user mode, which passes /dev/fuse's reads and writes through.
	command -v i686-linux-gnu-gcc >/dev/null || skip_test "needs gcc-i686-linux-gnu"
	i686-linux-gnu-gcc -static -O2 -Wall -Wextra -Wno-psabi \
		-o "$TESTDIR/fx32.bin" "$TOP/fuseexport.c" -pthread 2>cc.err || fail "i686-linux-gnu-gcc: $(cat cc.err)"
	if "$TESTDIR/fx32.bin" --version >/dev/null 2>&1; then
		ln -s fx32.bin "$TESTDIR/fx32"
	else
		command -v qemu-i386 >/dev/null || skip_test "needs qemu-i386 (qemu-user): this kernel runs no 32-bit binary"
		printf '#!/bin/sh\nexec qemu-i386 "%s" "$@"\n' "$TESTDIR/fx32.bin" >"$TESTDIR/fx32"
		chmod 755 "$TESTDIR/fx32"
		echo ": the kernel runs no 32-bit binary; qemu-i386 runs it" >&2
	fi
	head -c $MiB /dev/urandom >pat; : >mp
	truncate -s 6G src
	m32_check "$PWD/src"
	truncate -s 6G img
	loop=$(losetup -f --show img) || fail "losetup"
	track_loop "$loop"
	m32_check "$loop"
	losetup -d "$loop"
}

t_same_mp() {
	mkimg src 16; mkimg src2 16; : >mp
	fx_up "$PWD/src" "$PWD/mp"
	timeout 20 "$FX" "$PWD/src2" "$PWD/mp" 2>err && { track_pid "$(fx_pid "$PWD/mp" | tail -n1)"; fail "second export on one mount point accepted"; }
	cat err >&2
	eq "$(wc -l <err)" 1 "stderr lines"
	grep -q '^fuseexport: ' err || fail "message: $(cat err)"
	eq "$(findmnt -n --mountpoint "$PWD/mp" | wc -l)" 1 "mounts on the mount point"
	cmp mp src || fail "the first export"
	fx_down "$PWD/mp"
}

refused() { # refused ARGS...: fuseexport must refuse with one line
	local rc=0
	timeout 20 "$FX" "$@" 2>err || rc=$?
	if [ $rc -eq 0 ]; then track_mount "${!#}"; track_pid "$(fx_pid "${!#}")"; fail "fuseexport $* accepted"; fi
	[ $rc -ne 124 ] || fail "fuseexport $* hangs"
	cat err >&2
	eq "$(wc -l <err)" 1 "stderr lines"
	grep -Eq '^fuseexport: .+: .+' err || fail "message: $(cat err)"
	refute "${!#} mounted" mounted "${!#}"
	return 0
}

t_lock_rw_rw() {
	mkimg src 16; : >mp1; : >mp2
	fx_up -w "$PWD/src" "$PWD/mp1"
	refused -w "$PWD/src" "$PWD/mp2"
	refused -g "$PWD/src" "$PWD/mp2"
	fx_down "$PWD/mp1"
	fx_up -w "$PWD/src" "$PWD/mp2"
	fx_down "$PWD/mp2"
}

t_lock_ro_ro() {
	local p1
	mkimg src 16; : >mp1; : >mp2
	fx_up "$PWD/src" "$PWD/mp1"; p1=$FXPID
	fx_up "$PWD/src" "$PWD/mp2"
	cmp mp1 src || fail "first"
	cmp mp2 src || fail "second"
	fx_down "$PWD/mp2"
	FXPID=$p1 fx_down "$PWD/mp1"
}

t_lock_rw_ro() {
	mkimg src 16; : >mp1; : >mp2
	fx_up -w "$PWD/src" "$PWD/mp1"
	refused "$PWD/src" "$PWD/mp2"
	fx_down "$PWD/mp1"
	fx_up "$PWD/src" "$PWD/mp1"
	refused -w "$PWD/src" "$PWD/mp2"
	fx_down "$PWD/mp1"
}

t_over_itself() {
	local m
	mkimg img 64; cp img expected
	m=$(stat -c %A img)
	fx_up "$PWD/img" "$PWD/img"
	eq "$(stat -c %A img)" "-r--------" "mode of the read-only export"
	cmp img expected || fail "the image through its own read-only export"
	fx_down "$PWD/img"
	fx_up -w "$PWD/img" "$PWD/img"
	cmp img expected || fail "the image through its own export"
	eq "$(stat -c %A img)" "-rw-------" "mode of the export"
	head -c $MiB /dev/urandom >data
	put img $((7 * MiB)) data; put expected $((7 * MiB)) data
	cmp img expected || fail "after a write"
	fx_down "$PWD/img"
	refute "still mounted" mounted "$PWD/img"
	eq "$(stat -c %A img)" "$m" "the image's own mode after the export"
	cmp img expected || fail "image after the export"
}

t_empty_source() {
	: >src; : >mp
	fx_up "$PWD/src" "$PWD/mp"
	eq "$(stat -c %s mp)" 0 "size"
	eq "$(wc -c <mp)" 0 "bytes read"
	fx_down "$PWD/mp"
	fx_up -w "$PWD/src" "$PWD/mp"
	eq "$("$PY" "$FXIO" pwrite mp 0 4096)" ENOSPC "pwrite into an empty fixed export"
	fx_down "$PWD/mp"
	fx_up -g "$PWD/src" "$PWD/mp"
	head -c 5000 /dev/urandom >data
	put mp 0 data
	eq "$(stat -c %s mp)" 5000 "size after growing an empty export"
	fx_down "$PWD/mp"
	cmp src data || fail "source"
}

t_huge_source() {
	local s=$((4 << 40)) last
	truncate -s $s src; : >mp
	head -c $MiB /dev/urandom >data
	last=$(((s >> 20) - 1))
	dd if=data of=src bs=1M seek=$last conv=notrunc status=none
	fx_up -w "$PWD/src" "$PWD/mp"
	eq "$(stat -c %s mp)" $s "size of a 4 TiB source"
	dd if=mp bs=1M skip=$last status=none | cmp - data || fail "the last MiB"
	dd if=mp bs=1M skip=$last iflag=direct status=none | cmp - data || fail "the last MiB, O_DIRECT"
	seek_eq "seek -a -r 0" "seek -a -r 0"
	dd if=data of=mp bs=1M seek=$((last - 1000)) conv=notrunc status=none || fail "write near the end"
	eq "$("$PY" "$FXIO" pwrite mp $s 4096)" ENOSPC "pwrite at 4 TiB"
	case $("$PY" "$FXIO" pwrite mp $(((1 << 63) - 4096)) 4096) in
	ENOSPC|EINVAL|EFBIG) ;; *) fail "pwrite at 2^63 - 4096 was not refused" ;;
	esac
	fx_down "$PWD/mp"
	dd if=src bs=1M skip=$((last - 1000)) count=1 status=none | cmp - data || fail "source after the write"
	eq "$(stat -c %s src)" $s "source size"
}

# READs of a fixed-size export are sent from a mapping of the source: right
# after writes through the export, at an offset that is not page-aligned,
# and on a source over 4 GiB, whose mapping is made anew every 1024 READs
# so that the server's page tables stay small
t_mapped_reads() {
	local s=$((6 << 30)) stride=$((2 << 20)) n=3000 pte
	truncate -s $s src; : >mp
	"$PY" "$FXIO" strided write src $stride $n
	fx_up --passthrough=off -w "$PWD/src" "$PWD/mp"
	eq "$("$PY" "$FXIO" strided read mp $stride $n)" "$("$PY" "$FXIO" strided read src $stride $n)" \
		"$n reads 2 MiB apart"
	pte=$(awk '/^VmPTE:/ { print $2 }' /proc/$FXPID/status)
	log "server page tables after $n reads 2 MiB apart: $pte KiB"
	[ "$pte" -lt 8192 ] || fail "the server's page tables grew to $pte KiB"
	"$PY" "$FXIO" strided write mp $stride $n again
	eq "$("$PY" "$FXIO" strided read mp $stride $n)" "$("$PY" "$FXIO" strided read src $stride $n)" \
		"reads after writes through the export"
	fx_down "$PWD/mp"
	mkimg src 8
	fx_up --passthrough=off --offset=12345 --size=3M "$PWD/src" "$PWD/mp"
	cmp mp <(range src 12345 $((3 * MiB))) || fail "a window at an unaligned offset"
	fx_down "$PWD/mp"
}

t_odd_names() {
	local src="$PWD/a b,c=d\\e" mp="$PWD/m p,ro,x"
	mkimg "$src" 4; : >"$mp"
	fx_up -w "$src" "$mp"
	cmp "$src" "$mp" || fail "cmp"
	findmnt -n -o OPTIONS --mountpoint "$mp" | grep -qw ro && fail "a comma in a name reached the mount options"
	fx_down "$mp"
}

# the server of a relative mount point is the one holding ./src open
# (another test, or anyone, may export some other "mp")
ours() {
	local p
	for p in $(fx_pid "$1"); do
		[ "$(readlink /proc/$p/fd/* 2>/dev/null | grep -cx "$PWD/src")" -gt 0 ] && echo "$p"
	done
	return 0
}

t_relative_paths() {
	mkimg src 4; : >mp
	"$FX" -w src mp 2>err || fail "exit $?: $(cat err)"
	track_mount "$PWD/mp"
	FXPID=$(ours mp); track_pid "$FXPID"
	cmp src mp || fail "cmp"
	kill -TERM "$FXPID"
	wait_gone "$FXPID" 10 || fail "server still running after SIGTERM"
	refute "still mounted after SIGTERM (relative mount point)" mounted "$PWD/mp"
	"$FX" src mp 2>err || fail "exit $?: $(cat err)"
	FXPID=$(ours mp); track_pid "$FXPID"
	fx_down "$PWD/mp"
}

t_mode_untouched() {
	local before
	mkimg src 16; : >mp; chmod 640 src mp
	before=$(stat -c '%a %u %g %s %Y' src)
	fx_up "$PWD/src" "$PWD/mp"
	cat mp >/dev/null
	fx_down "$PWD/mp"
	eq "$(stat -c '%a %u %g %s %Y' src)" "$before" "source metadata after a read-only export"
	eq "$(stat -c '%a %s' mp)" "640 0" "mount point file after the export"
}

# ---------------------------------------------------------------------------
# Without root (through fusermount3), as a mount(8) helper, and a window

as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }

# In a private mount namespace: a 0666 /dev/fuse (the machine's is 0600) and
# a directory of uid 65534's own, holding its image and mount point
nonroot_ns() {
	local pid
	mknod fuse c 10 229; chmod 666 fuse; mount --bind fuse /dev/fuse
	mkdir u; mkimg u/src 8; : >u/mp; cp u/src expected; chown -R 65534:65534 u
	as_user "$FX" -w "$PWD/u/src" "$PWD/u/mp" || fail "export as uid 65534"
	pid=$(fx_pid "$PWD/u/mp"); track_pid "$pid"
	eq "$(as_user stat -c %u:%A u/mp)" "65534:-rw-------" "owner and mode"
	refute "root got in without allow_other" stat u/mp 2>/dev/null
	as_user cmp u/mp expected || fail "cmp as the user"
	head -c 65536 /dev/urandom >data; chmod 644 data
	as_user dd if=data of=u/mp bs=64k seek=3 conv=notrunc status=none || fail "write as the user"
	dd if=data of=expected bs=64k seek=3 conv=notrunc status=none
	findmnt -n -o OPTIONS --mountpoint "$PWD/u/mp" | grep -q allow_other &&
		fail "allow_other without user_allow_other in /etc/fuse.conf"
	as_user fusermount3 -u "$PWD/u/mp" || fail "fusermount3 -u"
	wait_gone "$pid" 10 || fail "server still running after fusermount3 -u"
	refute "still mounted after fusermount3 -u" mounted "$PWD/u/mp"
	cmp u/src expected || fail "the source after the export"

	refute "--allow-other=on accepted" as_user "$FX" --allow-other=on "$PWD/u/src" "$PWD/u/mp" 2>err
	grep -q user_allow_other err || fail "the refusal does not say why: $(cat err)"
	echo user_allow_other >fuse.conf; mount --bind fuse.conf /etc/fuse.conf
	as_user "$FX" "$PWD/u/src" "$PWD/u/mp" || fail "export with user_allow_other"
	pid=$(fx_pid "$PWD/u/mp"); track_pid "$pid"
	findmnt -n -o OPTIONS --mountpoint "$PWD/u/mp" | grep -q allow_other ||
		fail "auto did not allow others with user_allow_other"
	mount_opts "$PWD/u/mp" | tr , '\n' | grep -qx ro ||
		fail "a read-only export is not mounted read-only: $(mount_opts "$PWD/u/mp")"
	kill -TERM "$pid"
	wait_gone "$pid" 10 || fail "server still running after SIGTERM"
	refute "still mounted after SIGTERM" mounted "$PWD/u/mp"

	: >notmine; chmod 666 notmine
	refute "someone else's mount point accepted" as_user "$FX" "$PWD/u/src" "$PWD/notmine" 2>err
	grep -q "not yours" err || fail "refusal: $(cat err)"
	refute "exported without fusermount3" as_user env PATH=/nonexistent "$FX" "$PWD/u/src" "$PWD/u/mp" 2>err
	grep -q "install fuse3" err || fail "no fusermount3: $(cat err)"
	eq "$(wc -l <err)" 1 "stderr lines"
	refute "mounted without fusermount3" mounted "$PWD/u/mp"
	cmp u/src expected || fail "the source at the end"
}
t_nonroot() { in_ns nonroot_ns; }

# Without root, a fusermount3 found through a relative PATH entry (".")
# unmounts a detached server's export too, though the server works from /
nonroot_relative_ns() {
	local pid
	mknod fuse c 10 229; chmod 666 fuse; mount --bind fuse /dev/fuse
	mkdir u; mkimg u/src 4; : >u/mp; chown -R 65534:65534 u
	ln -s "$(command -v fusermount3)" u/fusermount3
	(cd u && as_user env PATH=. "$FX" src mp) || fail "export as uid 65534"
	pid=$(fx_pid mp); track_pid "$pid"
	fuse_mounted "$PWD/u/mp" || fail "not mounted"
	kill -TERM "$pid"
	wait_gone "$pid" 10 || fail "server still running after SIGTERM"
	refute "still mounted after SIGTERM: the server's fusermount3 -u did not run" mounted "$PWD/u/mp"
}
t_nonroot_relative() { in_ns nonroot_relative_ns; }

# mount(8) finds helpers in /sbin: ours show there in this namespace only
helper_ns() {
	mkdir helpers
	ln -s "$FX" helpers/mount.fuse.fuseexport
	mount -t overlay overlay -o "lowerdir=$PWD/helpers:/usr/sbin" /usr/sbin
	mkimg src 8; cp src expected; : >mp
	mount -t fuse.fuseexport "$PWD/src" "$PWD/mp" -o rw,queues=2 || fail "mount -t fuse.fuseexport"
	fuse_mounted "$PWD/mp" || fail "not a fuse mount"
	[ -z "$(losetup -j "$PWD/src")" ] || fail "mount(8) set up a loop device"
	eq "$(stat -c %A mp)" -rw------- "mode with -o rw"
	head -c 65536 /dev/urandom >data
	dd if=data of=mp bs=64k seek=5 conv=notrunc status=none || fail "write"
	dd if=data of=expected bs=64k seek=5 conv=notrunc status=none
	umount "$PWD/mp" || fail "umount"
	cmp src expected || fail "source after the helper's export"
	# a window in fstab: mount(8) takes offset= and sizelimit= for a loop
	# device of its own; window_offset= and window_size= reach us
	printf '%s %s fuse.fuseexport defaults,nofail,_netdev,ro,passthrough=off,window_offset=1M,window_size=2M 0 0\n' \
		"$PWD/src" "$PWD/mp" >fstab
	mount --fstab "$PWD/fstab" -a || fail "mount --fstab -a"
	fuse_mounted "$PWD/mp" || fail "the fstab line mounted nothing"
	[ -z "$(losetup -j "$PWD/src")" ] || fail "mount(8) set up a loop device for the fstab window"
	eq "$(stat -c %s:%A mp)" "$((2 * MiB)):-r--------" "size and mode from the fstab line"
	cmp mp <(range expected $MiB $((2 * MiB))) || fail "window content"
	findmnt -n -o SOURCE --mountpoint "$PWD/mp" | grep -qx "$PWD/src" ||
		fail "the export's source is not the file: $(findmnt -n -o SOURCE --mountpoint "$PWD/mp")"
	umount "$PWD/mp"
	# a value with a comma in double quotes, as libmount passes it on
	printf '%s %s fuse.fuseexport control="%s" 0 0\n' "$PWD/src" "$PWD/mp" "$PWD/c,tl" >fstab
	mount --fstab "$PWD/fstab" "$PWD/mp" 2>err || fail "control=\"PATH,WITH COMMA\" in fstab: $(cat err)"
	[ -p "c,tl" ] || fail "no FIFO at the quoted control= path: $(ls)"
	umount "$PWD/mp"
	# the old names: offset= is mount(8)'s, refused with the new name
	printf '%s %s fuse.fuseexport ro,offset=1M,size=2M 0 0\n' "$PWD/src" "$PWD/mp" >fstab
	refute "offset= in fstab accepted" mount --fstab "$PWD/fstab" "$PWD/mp" 2>err
	grep -q "window_offset=" err || fail "the refusal does not name window_offset=: $(cat err)"
	refute "mounted after a refusal" mounted "$PWD/mp"
	refute "-o bogus accepted" mount -t fuse.fuseexport "$PWD/src" "$PWD/mp" -o bogus 2>err
	grep -q "^fuseexport: -o bogus: unknown option" err || fail "refusal: $(cat err)"
	refute "mounted after a refusal" mounted "$PWD/mp"
	return 0
}
t_helper() { in_ns helper_ns; }

# The same fstab window mounted by a user (a "user" line), through the
# setuid mount(8), our helper and fusermount3
helper_user_ns() {
	local pid
	mknod fuse c 10 229; chmod 666 fuse; mount --bind fuse /dev/fuse
	mkdir helpers; ln -s "$FX" helpers/mount.fuse.fuseexport
	mount -t overlay overlay -o "lowerdir=$PWD/helpers:/usr/sbin" /usr/sbin
	mkdir u; mkimg u/src 8; : >u/mp; cp u/src expected; chown -R 65534:65534 u
	printf '%s %s fuse.fuseexport user,noauto,window_offset=1M,window_size=2M 0 0\n' \
		"$PWD/u/src" "$PWD/u/mp" >fstab
	mount --bind fstab /etc/fstab
	as_user mount "$PWD/u/mp" 2>err || fail "mount as the user: $(cat err)"
	pid=$(pgrep -u 65534 -f "^/[a-z/]*sbin/mount.fuse.fuseexport $PWD/u/src ") || fail "no server"
	track_pid "$pid"
	fuse_mounted "$PWD/u/mp" || fail "the fstab line mounted nothing"
	[ -z "$(losetup -j "$PWD/u/src")" ] || fail "mount(8) set up a loop device"
	eq "$(as_user stat -c %s:%u u/mp)" "$((2 * MiB)):65534" "size and owner"
	range expected $MiB $((2 * MiB)) >window; chmod 644 window
	as_user cmp u/mp window || fail "window content"
	as_user fusermount3 -u "$PWD/u/mp" || fail "fusermount3 -u"
	wait_gone "$pid" 10 || fail "server still running after fusermount3 -u"
	printf '%s %s fuse.fuseexport user,noauto,offset=1M 0 0\n' "$PWD/u/src" "$PWD/u/mp" >fstab
	refute "offset= in fstab accepted" as_user mount "$PWD/u/mp" 2>err
	grep -q "window_offset=" err || fail "the refusal does not name window_offset=: $(cat err)"
	refute "mounted after a refusal" mounted "$PWD/u/mp"
}
t_helper_user() { in_ns helper_user_ns; }

# fsx-style torture: seeded random writes, reads, truncates, punches, zero
# ranges, fsyncs (from several descriptors), mmap access, copy_file_range
# and sendfile (around mmap writes too) and reopens with O_TRUNC, every read
# checked against a model; one process over the whole file, then four on
# disjoint stretches at once, on a growable export and on a fixed-size one
t_torture() {
	local seed=${FX_SEED:-$RANDOM} ops=${FX_TORTURE_OPS:-1500}
	mkimg src 8; : >mp
	fx_up -g $1 "$PWD/src" "$PWD/mp"
	log "seed $seed (replay: FX_SEED=$seed)"
	"$PY" "$TOP/tests/torture.py" mp "$seed" "$ops" 1 growable >&2 || fail "one process, seed $seed"
	# the first run's truncates and O_TRUNC may leave a few bytes: room for four
	truncate -s 8M mp || fail "truncate -s 8M"
	"$PY" "$TOP/tests/torture.py" mp "$((seed + 1))" "$ops" 4 growable >&2 || fail "four processes, seed $((seed + 1))"
	fx_down "$PWD/mp"
	# fixed size: READs are sent from the source's mapping
	fx_up -w $1 "$PWD/src" "$PWD/mp"
	"$PY" "$TOP/tests/torture.py" mp "$((seed + 2))" "$ops" 4 fixed >&2 ||
		fail "four processes, fixed size, seed $((seed + 2))"
	fx_down "$PWD/mp"
}

# crash consistency: the server SIGKILLed at a random moment under a writer
# that fsyncs each block; every block fsync'ed before is in the source
t_crash() {
	local round seed writer
	for round in 1 2 3; do
		seed=$RANDOM
		mkimg src 32; : >mp; : >journal
		fx_up -w $1 "$PWD/src" "$PWD/mp"
		"$PY" "$TOP/tests/crash.py" write mp journal "$seed" &
		writer=$!
		sleep "0.$((RANDOM % 9 + 1))"
		kill -KILL "$FXPID"
		wait_gone "$writer" 20 || fail "round $round: the writer hangs after the server died"
		umount -l "$PWD/mp"
		log "round $round, seed $seed: $(wc -l <journal) blocks fsync'ed before the kill"
		"$PY" "$TOP/tests/crash.py" verify src journal >&2 || fail "round $round, seed $seed"
	done
}

# doc/security.md, claim by claim: other users are kept out
# by the mode bits (default_permissions) and entirely without allow_other;
# chmod can open the file to them only with allow_other; a writable export
# of a block device that is mounted is refused (O_EXCL)
t_security() {
	local loop
	mkimg src 8; : >mp; chmod 755 .
	fx_up -w --allow-other=on "$PWD/src" "$PWD/mp"
	refute "another user read a -rw------- export" as_user cat mp >/dev/null 2>&1
	chmod 644 mp || fail "chmod 644 with allow_other"
	as_user cmp mp src || fail "another user cannot read after chmod 644"
	as_user dd if=/dev/zero of=mp bs=4k count=1 conv=notrunc status=none 2>/dev/null &&
		fail "another user wrote to a -rw-r--r-- export"
	refute "another user changed the mode" as_user chmod 666 mp 2>/dev/null
	fx_down "$PWD/mp"
	fx_up -w --allow-other=off "$PWD/src" "$PWD/mp"
	refute "chmod 644 without allow_other" chmod 644 mp 2>/dev/null
	refute "another user got in without allow_other" as_user stat mp >/dev/null 2>&1
	fx_down "$PWD/mp"
	mkfs.ext4 -q -F src >/dev/null 2>&1
	loop=$(losetup -f --show src); track_loop "$loop"
	mkdir m; mount "$loop" m; track_mount "$PWD/m"
	refute "a mounted block device exported writable" "$FX" -w "$loop" "$PWD/mp" 2>err
	log "$(cat err)"
	umount m
	return 0
}

# Command-line fuzz: random and malformed argument lists from a pool of
# tokens never crash the program (no exit by signal, no hang) and never leave
# a mount or a server behind; the seed is printed
t_cmdline_fuzz() {
	local seed=${FX_SEED:-$RANDOM} i n k m rc args pool before pid
	mkimg src 4; : >mp; mkdir d; mkfifo f
	before=$(sum src)
	pool=(-w -g -q -q0 -q1 -q65 -q999999999999999999999 --queues= --queues=2
		--allow-other --allow-other=on --allow-other=x --passthrough=on --passthrough=
		--offset=1M --offset=-1 --offset=99T --size=0 --size=1K --size=1Q -o -o ro
		--partition=1 --partition=0 --partitions --snapshot --commit -o snapshot
		-o rw,growable -o queues=0 -o size= -o bogus -o ,,, -o = -h -V -- - --bogus -x
		"" " " "$PWD/src" "$PWD/src" "$PWD/mp" "$PWD/mp" "$PWD/d" "$PWD/f" /dev/null
		"$PWD/nosuch" "$(printf 'a\tb\nc')" "$(head -c 300 /dev/zero | tr '\0' x)")
	log "seed $seed (replay: FX_SEED=$seed)"
	RANDOM=$seed
	for i in $(seq ${FX_CMDLINE_RUNS:-300}); do
		args=(); n=$((RANDOM % 6))
		for k in $(seq $n); do args+=("${pool[RANDOM % ${#pool[@]}]}"); done
		rc=0; timeout -s KILL 10 env --default-signal=INT,TERM,HUP "$FX" "${args[@]}" \
			>/dev/null 2>err </dev/null || rc=$?
		[ "$rc" -le 128 ] || fail "run $i: killed by signal $((rc - 128)) (137: hung): fuseexport ${args[*]}"
		for m in "$PWD/mp" "$PWD/src"; do	# either may be the mount point
			mounted "$m" || continue
			[ "$rc" -eq 0 ] || fail "run $i: exit $rc yet mounted: ${args[*]}"
			pid=$(fx_pid "$m")
			umount "$m" || fail "run $i: cannot unmount after ${args[*]}"
			[ -z "$pid" ] || wait_gone "$pid" 10 || fail "run $i: server stays after umount"
		done
	done
	[ -z "$(fx_pid "$PWD/mp")$(fx_pid "$PWD/src")" ] || fail "a server is left running"
	eq "$(sum src)" "$before" "source checksum"
}

# A short export session of the plain build under valgrind: no error, no leak
t_valgrind() {
	local vx=$TOP/fuseexport i
	[ -x "$vx" ] || make -s -C "$TOP" fuseexport >&2
	mkimg src 8; cp src expected; : >mp
	valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite \
		--log-file="$PWD/vg.log" "$vx" -f -w -q 2 "$PWD/src" "$PWD/mp" &
	FXPID=$!; track_pid "$FXPID"; track_mount "$PWD/mp"
	for i in $(seq 150); do fuse_mounted "$PWD/mp" && break; sleep 0.2; done
	fuse_mounted "$PWD/mp" || fail "no export under valgrind: $(cat vg.log)"
	cmp mp expected || fail "cmp"
	head -c 262144 /dev/urandom >data
	dd if=data of=mp bs=64k seek=3 conv=notrunc status=none
	dd if=data of=expected bs=64k seek=3 conv=notrunc status=none
	xfs_io -c "fpunch 0 64k" -c "seek -a -r 0" -c fsync mp >/dev/null
	dd if=/dev/zero of=expected bs=64k count=1 conv=notrunc status=none
	stat -f mp >/dev/null; touch mp; truncate -s 8M mp
	umount "$PWD/mp"
	wait "$FXPID" || { cat vg.log >&2; fail "valgrind: exit status $?"; }
	cmp src expected || fail "the source after the session"
}

# FUSE over io_uring: taken when the kernel offers it, with the ring threads
# doing the serving; without the offer auto falls back and on refuses
t_io_uring() {
	local param=/sys/module/fuse/parameters/enable_uring was nr busy=0 t rc
	was=$(cat $param)
	trap "echo $was >$param" EXIT
	nr=$(awk -F'[-,]' '{ print $NF + 1 }' /sys/devices/system/cpu/possible)
	mkimg src 16; : >mp
	echo N >$param
	refute "--io-uring=on without the kernel's offer" "$FX" --io-uring=on "$PWD/src" "$PWD/mp" 2>err
	grep -q "enable_uring" err || fail "the refusal does not say how: $(cat err)"
	eq "$(wc -l <err)" 1 "lines of the refusal"
	refute "mounted after the refusal" mounted "$PWD/mp"
	# the refusal is a halt at INIT: its final flush waits out no delay
	rc=0; timeout 60 "$FX" -w --io-uring=on --fault=op=flush,delay=600s \
		"$PWD/src" "$PWD/mp" 2>err || rc=$?
	eq $rc 1 "the exit status of a refusal with a flush delayed 10 minutes"
	fx_fg -d --passthrough=off --io-uring=auto "$PWD/src" "$PWD/mp"
	grep -q "transport: read(2)" fg.err || fail "auto without the offer: $(grep transport fg.err)"
	cmp src mp || fail "cmp over read(2)"
	fx_down "$PWD/mp"
	echo Y >$param
	fx_fg -d --passthrough=off -q 1 -o io_uring=auto "$PWD/src" "$PWD/mp"
	grep -q "transport: FUSE over io_uring" fg.err || fail "auto with the offer: $(grep transport fg.err)"
	cmp src mp || fail "cmp over io_uring"
	dd if=mp of=/dev/null bs=4k iflag=direct status=none
	for t in $(ls /proc/$FXPID/task | sort -n | tail -n "$nr"); do
		busy=$((busy + $(cut -d' ' -f1 /proc/$FXPID/task/$t/schedstat)))
	done
	log "the ring threads ran $busy ns"
	[ "$busy" -gt 1000000 ] || fail "the ring threads served nothing"
	fx_down "$PWD/mp"
}

# make install: the binary on a user's PATH, the man page, and the mount(8)
# helper links in /sbin, where mount(8) looks for them; then installed for
# real (over a scratch /usr/local and /sbin in this namespace only), found
# by a user's shell and by mount -t fuse.fuseexport
t_install() {
	make -s -C "$TOP" install DESTDIR="$PWD/dest" PREFIX=/usr >&2 || fail "make install"
	[ -x dest/usr/bin/fuseexport ] || fail "no dest/usr/bin/fuseexport"
	[ -f dest/usr/share/man/man1/fuseexport.1 ] || fail "no man page"
	eq "$(readlink dest/sbin/mount.fuseexport)" /usr/bin/fuseexport "mount.fuseexport"
	eq "$(readlink dest/sbin/mount.fuse.fuseexport)" /usr/bin/fuseexport "mount.fuse.fuseexport"
	in_ns install_ns
}
install_ns() {
	local sbin
	sbin=$(realpath /sbin)
	mkdir -p local upper work
	mount -t tmpfs tmpfs /usr/local
	mount -t overlay overlay -o "lowerdir=$sbin,upperdir=$PWD/upper,workdir=$PWD/work" "$sbin"
	make -s -C "$TOP" install >&2 || fail "make install"
	eq "$(setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH=/usr/local/bin:/usr/bin:/bin \
		sh -c 'command -v fuseexport')" /usr/local/bin/fuseexport "a user's command -v fuseexport"
	mkimg src 4; : >mp
	mount -t fuse.fuseexport "$PWD/src" "$PWD/mp" -o ro || fail "mount -t fuse.fuseexport"
	fuse_mounted "$PWD/mp" || fail "not a fuse mount"
	cmp src mp || fail "cmp"
	umount "$PWD/mp"
}

# The documentation's commands, run as written: every ```sh block of
# README.md and every example of the man page (tests/doccmds.sh finds
# them, with what a block needs first), each in an empty directory of its
# own, as root or, where it says so, as a user. A block must exit 0 and
# leave nothing behind: no export or other mount, no process (not even in
# a mount namespace of its own), no loop device.
# In a namespace where /usr/local and /sbin take `make install` and
# /etc/fstab and /srv take a recipe's lines and images, none of them the
# machine's
docs_ns() {
	local b d how ran=0 skipped=0 failed= where top=$PWD
	sh "$TOP/tests/doccmds.sh" blocks "$TOP/README.md" "$TOP/fuseexport.1" || fail "tests/doccmds.sh"
	mkdir bin upper work; ln -s "$FX" bin/fuseexport
	mount -t tmpfs tmpfs /usr/local
	mount -t overlay overlay -o "lowerdir=$(realpath /sbin),upperdir=$PWD/upper,workdir=$PWD/work" "$(realpath /sbin)"
	cp /etc/fstab fstab; mount --bind fstab /etc/fstab
	mount -t tmpfs -o size=64m tmpfs /srv
	mknod fuse c 10 229; chmod 666 fuse; mount --bind fuse /dev/fuse
	chmod 755 .
	for b in blocks/*.sh; do
		b=$top/${b%.sh}; d=$top/run${b##*/}; where=$(cat "$b.where")
		how=$(cat "$b.how")
		case $how in skip*) log "$where: skipped: ${how#skip }"; skipped=$((skipped + 1)); continue ;; esac
		mkdir "$d"
		DOCS_BEFORE=" $(docs_ns_pids | tr '\n' ' ') "
		DOCS_MOUNTS=$(findmnt -rn -o TARGET | sort)
		if ! (cd "$d" && export PATH="$top/bin:$PATH" && docs_block "$b" "$how") >"$d.log" 2>&1; then
			failed="$failed $where"; log "$where: failed:"; sed 's/^/:   /' "$d.log" >&2
		fi
		docs_left "$where" "$d" || failed="$failed $where"
		log "$where: done at ${SECONDS}s"
		ran=$((ran + 1))
	done
	log "$ran blocks run, $skipped skipped"
	[ -z "$failed" ] || fail "blocks failed or left something behind:$failed"
	[ "$ran" -ge 10 ] || fail "only $ran blocks run"
}
# docs_block BLOCK HOW: its first commands, the block (as HOW says), its then
docs_block() {
	sh -e "$1.first" || { echo "its first commands failed"; return 1; }
	case $2 in
	run) timeout 60 sh -e "$1.sh" ;;
	user) chown -R 65534:65534 . && timeout 60 setpriv --reuid=65534 --regid=65534 --clear-groups \
		env HOME="$PWD" sh -e "$1.sh" ;;
	esac || { echo "the block failed: exit $?"; return 1; }
	sh -e "$1.then" || { echo "its then commands failed"; return 1; }
}
# the processes in this mount namespace
docs_ns_pids() {
	local p
	for p in /proc/[0-9]*; do
		[ "$p/ns/mnt" -ef /proc/self/ns/mnt ] && echo "${p#/proc/}"
	done 2>/dev/null
}
# docs_left WHERE DIR: 0 if the block left no export or other mount, no
# process (in this mount namespace, or anywhere working in DIR or holding a
# file there: a server detached in a namespace of its own) and no loop
# device (given 10 s to go: umount returns before a server exits); else
# says what and undoes it
docs_left() {
	local i mounts procs loops p
	for i in $(seq 100); do
		mounts=$( (findmnt -rn -t fuse.fuseexport -o TARGET
			findmnt -rn -o TARGET | sort | comm -13 <(echo "$DOCS_MOUNTS") -) | sort -u)
		procs=
		for p in $(docs_ns_pids) $(find /proc -mindepth 2 -maxdepth 3 \
				\( -path '/proc/[0-9]*/cwd' -o -path '/proc/[0-9]*/fd/*' \) \
				\( -lname "$2" -o -lname "$2/*" \) 2>/dev/null | cut -d/ -f3 | sort -u); do
			case "$DOCS_BEFORE$procs " in *" $p "*|*" $p:"*) continue ;; esac
			[ "$p" = $$ ] || [ "$p" = "$BASHPID" ] && continue
			[ -e "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null &&
				procs="$procs $p:$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-60)"
		done
		loops=$(losetup -n -l -O NAME,BACK-FILE | awk -v d="$ROOT/" 'index($2, d) == 1 || index($2, "/srv/") == 1 { print $1 }')
		[ -z "$mounts$procs$loops" ] && return 0
		sleep 0.1
	done
	log "$1: left behind: mounts [$mounts] processes [$procs] loop devices [$loops]"
	for p in $mounts; do umount -l "$p"; done
	for p in $procs; do kill "${p%%:*}" 2>/dev/null; done
	for p in $loops; do losetup -d "$p"; done
	return 1
}
t_docs() { in_ns docs_ns; }

# Relative paths a detached server goes on using (it works from /): the
# --control FIFO is removed at the end, a file of the same name in / is
# not, nor is one under it (--control=etc/x). Run in a throwaway / of our
# own, a tmpfs with /usr bound read-only, so the real / is never at stake.
relative_detach_ns() {
	local r=$PWD/root pid
	mkdir "$r"; mount -t tmpfs -o size=64m tmpfs "$r"
	mkdir "$r/usr" "$r/dev" "$r/proc" "$r/etc" "$r/work"
	mount --bind /usr "$r/usr"; mount -o remount,bind,ro "$r/usr"
	for d in bin sbin lib lib64; do [ -L /$d ] && ln -s "$(readlink /$d)" "$r/$d"; done
	mknod "$r/dev/fuse" c 10 229; mknod "$r/dev/null" c 1 3; mknod "$r/dev/zero" c 1 5
	mount -t proc proc "$r/proc"
	cp "$FX" "$r/fuseexport"
	mkimg "$r/work/src" 4; : >"$r/work/mp"; mkdir "$r/work/etc"
	echo "keep me" >"$r/ctl"; echo "keep me too" >"$r/etc/x"
	chroot "$r" /bin/sh -c 'cd /work && /fuseexport -w --snapshot=s.fx --control=ctl src mp &&
		[ -p ctl ] && cmp mp src && echo clear >ctl &&
		dd if=/dev/zero of=mp bs=4k count=1 conv=notrunc,fsync status=none &&
		umount /work/mp' || fail "the export in the chroot"
	for pid in $(fx_pid mp); do
		[ "$(readlink /proc/$pid/root)" = "$r" ] && { wait_gone "$pid" 10 || fail "server still running"; }
	done
	eq "$(cat "$r/ctl" 2>&1)" "keep me" "the file in / named as the relative --control"
	refute "the FIFO is left after the export ended" [ -e "$r/work/ctl" ]
	[ -s "$r/work/s.fx" ] || fail "the snapshot FILE is not in the working directory"
	chroot "$r" /bin/sh -c 'cd /work && /fuseexport --control=etc/x src mp && [ -p etc/x ] &&
		umount /work/mp' || fail "the second export in the chroot"
	for pid in $(fx_pid mp); do
		[ "$(readlink /proc/$pid/root)" = "$r" ] && { wait_gone "$pid" 10 || fail "server still running"; }
	done
	eq "$(cat "$r/etc/x" 2>&1)" "keep me too" "/etc/x after --control=etc/x in /work"
	refute "the FIFO is left after the second export" [ -e "$r/work/etc/x" ]
	umount "$r/proc"
}
t_relative_detach() { in_ns relative_detach_ns; }

# -o: the same as the long options
t_o_list() {
	mkimg src 8; : >mp
	fx_up -o rw,queues=3,offset=2M,size=1M,nosuid,x-systemd.automount "$PWD/src" "$PWD/mp"
	eq "$(stat -c %s:%A mp)" "$MiB:-rw-------" "size and mode"
	eq "$(ls /proc/$FXPID/task | wc -l)" 5 "threads (3 queues, main and the log's)"
	cmp mp <(range src $((2 * MiB)) $MiB) || fail "content"
	fx_down "$PWD/mp"
	fx_up -o window_offset=3M,window_size=2M "$PWD/src" "$PWD/mp"
	eq "$(stat -c %s:%A mp)" "$((2 * MiB)):-r--------" "size and mode with window_offset=, window_size="
	cmp mp <(range src $((3 * MiB)) $((2 * MiB))) || fail "content with window_offset="
	fx_down "$PWD/mp"
	# a repeated option takes its last value, as in mount(8)'s lists
	fx_up -o queues=5,queues=2 --offset=1M --offset=4M "$PWD/src" "$PWD/mp"
	eq "$(ls /proc/$FXPID/task | wc -l)" 4 "threads (the last queues=, main, the log's)"
	cmp mp <(range src $((4 * MiB)) $((4 * MiB))) || fail "content (the last --offset)"
	fx_down "$PWD/mp"
}

# -o sync is mount(8)'s: the kernel flushes after every write (MS_SYNCHRONOUS),
# so a write no one fsync'ed is kept by a volatile write cache that then
# crashes; async, the default, lost it. mount(8)'s other generic options are
# taken and ignored (sync was refused as unknown).
t_o_sync() {
	local sy got
	: >mp
	head -c 65536 /dev/urandom >data
	for sy in sync async; do
		mkimg src 8
		fx_up -w $1 -o "$sy,noatime,lazytime,dirsync,strictatime,nodiratime,nomand,silent,iversion,comment=x" \
			--write-cache=volatile --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
		case $sy in sync) findmnt -no OPTIONS "$PWD/mp" | grep -qw sync || fail "not mounted sync: $(findmnt -no OPTIONS "$PWD/mp")" ;; esac
		dd if=data of=mp bs=64k conv=notrunc status=none
		echo crash >ctl
		for i in $(seq 50); do	# crashed: it reads no more
			dd if=mp of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null || break
			sleep 0.1
		done
		fx_down "$PWD/mp"
		got=lost; cmp -s -n 65536 data src && got=kept
		eq "$sy:$got" "$sy:$([ $sy = sync ] && echo kept || echo lost)" "a write, then a crash, under -o $sy"
	done
}

# A window: size, reads, writes, fallocate and SEEK_DATA/HOLE stay inside it,
# and not one byte outside it changes
t_window() {
	mkimg src 32; cp src orig; : >mp
	local off=$((5 * MiB)) len=$((12 * MiB))
	case " $1 " in *" --passthrough=on "*)	# a window cannot pass through
		"$FX" -w --offset=5M --size=12M $1 "$PWD/src" "$PWD/mp" 2>err &&
			fail "--passthrough=on accepted a window"
		grep -q "passthrough=on: " err || fail "refusal: $(cat err)"
		set -- "${1/--passthrough=on/--passthrough=auto}" ;;
	esac
	fx_up -w --offset=5M --size=12M $1 "$PWD/src" "$PWD/mp"
	eq "$(stat -c %s mp)" $len "size"
	cmp mp <(range orig $off $len) || fail "reads"
	head -c $len /dev/urandom >data
	dd if=data of=mp bs=1M conv=notrunc status=none || fail "write the whole window"
	dd if=data of=mp bs=64k skip=7 seek=7 count=3 oflag=direct conv=notrunc status=none ||
		fail "O_DIRECT write"
	if ! writeback "$1"; then	# there, refused at write-back: t_past_end
		eq "$("$PY" "$FXIO" pwrite mp $len 4096)" ENOSPC "pwrite at the window's end"
		eq "$("$PY" "$FXIO" pwrite mp $((len - 4096)) 8192 0x5a)" 4096 "a pwrite straddling the end"
		head -c 4096 /dev/zero | tr '\0' Z | dd of=data bs=4096 seek=$((len / 4096 - 1)) conv=notrunc status=none
	fi
	xfs_io -c "fpunch 0 64k" -c "fzero 1M 64k" -c "falloc 2M 64k" -c "falloc -k $((len - 4096)) 1M" mp ||
		fail "fallocate inside the window"
	xio_err 'No space left' "$PWD/mp" "falloc $((len - 4096)) 1M"
	xio_err 'No space left' "$PWD/mp" "falloc 0 $((len + MiB))"
	eq "$(stat -c %s mp)" $len "size after falloc past the window's end"
	dd if=/dev/zero of=data bs=64k count=1 conv=notrunc status=none
	dd if=/dev/zero of=data bs=64k seek=16 count=1 conv=notrunc status=none
	cmp mp data || fail "the window after writes and fallocate"
	# the source has data past the window; the export's first hole is its end
	eq "$(xfs_io -r -c "seek -h $((3 * MiB))" mp | awk '$1 == "HOLE" { print $2 }')" $len "SEEK_HOLE"
	eq "$(xfs_io -r -c "seek -d 0" mp | awk '$1 == "DATA" { print $2 }')" 65536 "SEEK_DATA after the punched hole"
	refute "truncate resized a window" truncate -s 1M mp 2>/dev/null
	eq "$(stat -c %s mp)" $len "size after a refused truncate"
	fx_down "$PWD/mp"
	cmp <(range src 0 $off) <(range orig 0 $off) || fail "bytes before the window changed"
	cmp <(range src $((off + len)) $((32 * MiB - off - len))) <(range orig $((off + len)) $((32 * MiB - off - len))) ||
		fail "bytes after the window changed"
	cmp <(range src $off $len) data || fail "the window in the source"
	# bad ranges
	bad --offset=33M "$PWD/src" "$PWD/mp"
	bad --offset=30M --size=4M "$PWD/src" "$PWD/mp"
	bad -g --offset=1M "$PWD/src" "$PWD/mp"
	bad --size=0 "$PWD/src" "$PWD/mp"
}

# ---------------------------------------------------------------------------
# Partitions (--partition, --partitions) and the snapshot (--snapshot,
# --commit), on images made by sfdisk and sgdisk, with file systems made,
# damaged and repaired by their own tools

# mbr_img FILE: a sparse 200 MiB image with an MBR made by sfdisk: primary
# partitions 1 (40M) and 2 (60M), and 3, extended, holding the logical 5
# (30M) and 6 (30M, swap)
mbr_img() {
	rm -f "$1"; truncate -s 200M "$1"
	sfdisk -q "$1" >&2 <<-EOF || fail "sfdisk $1"
	label: dos
	size=40M, type=83
	size=60M, type=83
	type=5
	size=30M, type=83
	size=30M, type=82
	EOF
}

# gpt_img FILE MIB: a sparse image with a GPT made by sgdisk: partitions 1
# (16M, "boot"), 2 (MIB MiB, "root fs") and 4 (8M, a Microsoft data type,
# no name); entry 3 is left empty
gpt_img() {
	rm -f "$1"; truncate -s $(($2 + 40))M "$1"
	sgdisk -n 1:2048:+16M -t 1:8300 -c 1:boot -n 2:0:+"$2"M -t 2:8300 -c 2:"root fs" \
		-n 4:0:+8M -t 4:0700 "$1" >&2 || fail "sgdisk $1"
}

# sfdisk_rows DEVICE: "NUMBER START SECTORS TYPE" per partition, from sfdisk -d
sfdisk_rows() {
	sfdisk -d "$1" | awk -F'[ ,=]+' '$2 == ":" && $3 == "start" {
		match($1, /[0-9]+$/); print substr($1, RSTART), $4, $6, $8 }'
}

# part DEVICE N start|sectors: partition N's start or size in sectors, as
# sfdisk -d says
part() {
	sfdisk_rows "$1" | awk -v n="$2" -v f="$3" '$1 == n { print f == "start" ? $2 : $3 }'
}

# part_bytes DEVICE N [SECTOR]: partition N's bytes, read with dd skip=START
part_bytes() {
	dd if="$1" bs="${3:-512}" skip="$(part "$1" "$2" start)" count="$(part "$1" "$2" sectors)" status=none
}

# same_but A B START SECTORS...: A and B hold the same bytes outside the
# given ranges of 512-byte sectors
same_but() {
	local a=$1 b=$2
	shift 2
	cp --sparse=always "$a" a.cut; cp --sparse=always "$b" b.cut
	while [ $# -ge 2 ]; do
		fallocate -p -o $(($1 * 512)) -l $(($2 * 512)) a.cut
		fallocate -p -o $(($1 * 512)) -l $(($2 * 512)) b.cut
		shift 2
	done
	cmp a.cut b.cut || fail "$b changed outside the ranges written"
	rm a.cut b.cut
}

t_partitions_list() {
	local img
	mbr_img disk.img
	gpt_img gpt.img 60
	for img in disk.img gpt.img; do
		"$FX" --partitions "$img" >out 2>err || fail "--partitions $img: exit $?: $(cat err)"
		refute "--partitions $img wrote to stderr: $(cat err)" [ -s err ]
		cat out >&2
		eq "$(sed -n 2p out | tr -s ' ' | sed 's/^ //')" "NR START END SECTORS SIZE TYPE NAME" "$img: header line"
		eq "$(tail -n +3 out | awk '{ print $1, $2, $4, $6 }')" "$(sfdisk_rows "$img")" \
			"$img: number, start, sectors and type, against sfdisk -d"
		tail -n +3 out | awk '$3 != $2 + $4 - 1 { exit 1 }' || fail "$img: END is not START + SECTORS - 1"
	done
	eq "$(head -n1 out)" "gpt partition table, 512-byte sectors" "first line for the GPT"
	eq "$(tail -n +3 out | awk '{ print $1 }' | tr '\n' ' ')" "1 2 4 " "GPT numbers (entry 3 empty)"
	grep -Eq '^ +2 .* root fs$' out || fail "the GPT name of partition 2"
	"$FX" --partitions disk.img >out
	eq "$(head -n1 out)" "dos partition table, 512-byte sectors" "first line for the MBR"
	eq "$(tail -n +3 out | awk '{ print $1 }' | tr '\n' ' ')" "1 2 3 5 6 " "MBR numbers (logical from 5)"
	grep -Eq '^ +6 .* 30M +82 *$' out || fail "partition 6: size and type"
}

# GPT names as long as a name gets, in 128 entries: 36 CJK units (108
# bytes of UTF-8) in the last entry, a surrogate pair in the first, and
# then, written by hand, lone surrogates and control characters, each
# printed as U+FFFD: what --partitions prints is UTF-8, a line a
# partition, and --partition exports the partition of the last entry
t_gpt_names() {
	local long i args=
	long=$(printf '数%.0s' $(seq 36))
	rm -f disk.img; truncate -s 100M disk.img; : >mp
	for i in $(seq 1 128); do args="$args -n $i:0:+256K"; done
	sgdisk $args -c 1:"données😀x" -c 128:"$long" disk.img >&2 || fail "sgdisk"
	head -c $((256 * 1024)) /dev/urandom >data
	dd if=data of=disk.img bs=512 seek="$(part disk.img 128 start)" conv=notrunc status=none
	"$FX" --partitions disk.img >out 2>err || fail "--partitions: exit $?: $(cat err)"
	eq "$(tail -n +3 out | awk '{ print $1, $2, $4, $6 }')" "$(sfdisk_rows disk.img)" \
		"rows against sfdisk -d"
	eq "$(awk '$1 == 128 { print $7 }' out)" "$long" "the name of 36 CJK units"
	eq "$(awk '$1 == 1 { print $7 }' out)" "données😀x" "the name with a surrogate pair"
	fx_up --partition=128 "$PWD/disk.img" "$PWD/mp"
	cmp mp data || fail "partition 128"
	fx_down "$PWD/mp"
	# lone surrogates (high, low, high at the end), a newline, a C1
	# control (NEL): one line, U+FFFD for each
	"$PY" "$TOP/tests/gptedit.py" disk.img name=2:D800,0061,DC00,000A,0085,0062,DBFF ||
		fail "gptedit.py"
	"$FX" --partitions disk.img >out 2>err || fail "--partitions, lone surrogates: exit $?: $(cat err)"
	eq "$(tail -n +3 out | wc -l)" 128 "rows with a newline in a name"
	eq "$(awk '$1 == 2 { print $7 }' out)" "�a���b�" "lone surrogates and control characters"
	"$PY" -c 'import sys; sys.stdin.buffer.read().decode()' <out ||
		fail "--partitions printed what is not UTF-8"
}

# a GPT of 1152 entries (sgdisk -S) holding partitions 1001 to 1128, past
# what Linux reads: each one exportable; a number not there is refused,
# naming them as a range; numbers past the most a table holds are refused
t_gpt_many_entries() {
	local i args=
	rm -f disk.img; truncate -s 200M disk.img; : >mp
	for i in $(seq 1001 1128); do args="$args -n $i:0:+1M"; done
	sgdisk -S 1152 $args disk.img >&2 || fail "sgdisk -S 1152"
	head -c $MiB /dev/urandom >data
	dd if=data of=disk.img bs=512 seek="$(part disk.img 1128 start)" conv=notrunc status=none
	bad --partition=1 "$PWD/disk.img" "$PWD/mp"
	grep -q "no partition 1 (partitions: 1001-1128)$" err || fail "no partition 1: $(cat err)"
	"$FX" --partitions disk.img >out 2>err || fail "--partitions: exit $?: $(cat err)"
	eq "$(tail -n +3 out | awk '{ print $1, $2, $4, $6 }')" "$(sfdisk_rows disk.img)" \
		"rows against sfdisk -d"
	fx_up --partition=1128 "$PWD/disk.img" "$PWD/mp"
	cmp mp data || fail "partition 1128"
	fx_down "$PWD/mp"
	fx_up -o partition=1001 "$PWD/disk.img" "$PWD/mp"
	cmp mp <(part_bytes disk.img 1001) || fail "partition 1001"
	fx_down "$PWD/mp"
	bad --partition=32769 "$PWD/disk.img" "$PWD/mp"
	grep -q "from 1 to 32768" err || fail "--partition=32769: $(cat err)"
}

# mkfs.ext4 in a primary and in a logical partition, through --partition
# exports: loop-mounted, files written, checked, and the export is the
# image's own bytes at the partition's place; nothing else changes
t_partition_ext4() {
	local n start sectors
	mbr_img disk.img; cp --sparse=always disk.img orig; : >mp; mkdir fs
	for n in 2 5; do
		start=$(part disk.img $n start); sectors=$(part disk.img $n sectors)
		fx_up -w --partition=$n "$PWD/disk.img" "$PWD/mp"
		eq "$(stat -c %s mp)" $((sectors * 512)) "partition $n's size"
		mkfs.ext4 -q -F mp || fail "mkfs.ext4 on partition $n"
		track_mount "$PWD/fs"
		mount -o loop mp fs || fail "mount -o loop partition $n"
		seq $n 100000 >fs/seq; mkdir fs/dir; cp "$FX" fs/dir/fx
		umount fs || fail "umount the ext4 of partition $n"
		e2fsck -fn mp >"$TESTDIR/fsck" 2>&1 || fail "e2fsck -fn: $(cat "$TESTDIR/fsck")"
		cmp mp <(dd if=disk.img bs=512 skip="$start" count="$sectors" status=none) ||
			fail "partition $n's export against dd skip=$start"
		fx_down "$PWD/mp"
	done
	fx_up -o partition=5 "$PWD/disk.img" "$PWD/mp"
	mount -o loop,ro mp fs || fail "mount -o loop,ro partition 5"
	seq 5 100000 | cmp - fs/seq || fail "the file in partition 5"
	cmp "$FX" fs/dir/fx || fail "the binary in partition 5"
	umount fs
	fx_down "$PWD/mp"
	same_but orig disk.img "$(part disk.img 2 start)" "$(part disk.img 2 sectors)" \
		"$(part disk.img 5 start)" "$(part disk.img 5 sectors)"
	eq "$(sfdisk_rows disk.img)" "$(sfdisk_rows orig)" "the table after the exports"
}

# mkfs.xfs in a GPT partition through a --partition export
t_partition_xfs() {
	gpt_img disk.img 320; cp --sparse=always disk.img orig; : >mp; mkdir fs
	fx_up -w --partition=2 "$PWD/disk.img" "$PWD/mp"
	eq "$(stat -c %s mp)" $((320 * MiB)) "size"
	mkfs.xfs -q -f mp || fail "mkfs.xfs"
	track_mount "$PWD/fs"
	mount -o loop mp fs || fail "mount -o loop"
	seq 100000 >fs/seq; mkdir fs/dir; cp "$FX" fs/dir/fx
	umount fs || fail "umount the xfs"
	xfs_repair -n mp >"$TESTDIR/repair" 2>&1 || fail "xfs_repair -n: $(cat "$TESTDIR/repair")"
	mount -o loop,ro mp fs || fail "mount -o loop,ro"
	seq 100000 | cmp - fs/seq || fail "the file in the xfs"
	cmp "$FX" fs/dir/fx || fail "the binary in the xfs"
	umount fs
	cmp mp <(part_bytes disk.img 2) || fail "the export against dd skip=START"
	fx_down "$PWD/mp"
	same_but orig disk.img "$(part disk.img 2 start)" "$(part disk.img 2 sectors)"
	sgdisk -v disk.img >&2 || fail "sgdisk -v after the export"
}

# the primary GPT damaged (its header, or the entries it names): the
# backup at the last LBA is used, numbers and places the same
t_gpt_backup() {
	local f start
	gpt_img disk.img 60; : >mp
	start=$(part disk.img 2 start)
	dd if=/dev/urandom of=disk.img bs=1M seek=$((start / 2048)) count=2 conv=notrunc status=none
	dd if=/dev/urandom of=disk.img bs=1M seek=$((start / 2048 + 59)) count=1 conv=notrunc status=none
	"$FX" --partitions disk.img >good || fail "--partitions"
	cp disk.img header; dd if=/dev/zero of=header bs=512 seek=1 count=1 conv=notrunc status=none
	cp disk.img entries; dd if=/dev/zero of=entries bs=512 seek=2 count=32 conv=notrunc status=none
	for f in header entries; do
		"$FX" --partitions "$f" >out 2>err || fail "--partitions, primary $f zeroed: $(cat err)"
		cmp out good || fail "--partitions, primary $f zeroed: $(cat out)"
		fx_up --partition=2 "$PWD/$f" "$PWD/mp"
		cmp mp <(part_bytes disk.img 2) || fail "partition 2, primary $f zeroed"
		fx_down "$PWD/mp"
	done
	# and the backup gone too: no table
	dd if=/dev/zero of=header bs=512 seek=$(($(stat -c %s header) / 512 - 1)) count=1 conv=notrunc status=none
	bad --partition=2 "$PWD/header" "$PWD/mp"
	grep -q "no partition table (MBR or GPT) that can be read" err || fail "refusal: $(cat err)"
}

# read errors where the GPT headers lie, from an NBD server that fails
# every read touching a sector listed in ./bad: the backup stands in for a
# primary that cannot be read; where neither can be, the error is what is
# said (on 728e558: "no partition table"), and a read that fails partway
# through the entries too
t_gpt_read_errors() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" size
	gpt_img disk.img 20; size=$(stat -c %s disk.img); : >mp
	"$FX" --partitions disk.img >good || fail "--partitions"
	echo 1 >bad
	nbdk eval get_size="echo $size" pread='while read b; do
		[ "$4" -lt $(((b + 1) * 512)) ] && [ $(($4 + $3)) -gt $((b * 512)) ] &&
		{ echo EIO bad sector >&2; exit 1; }; done <'"$PWD/bad"'
		dd if='"$PWD/disk.img"' iflag=skip_bytes,count_bytes skip="$4" count="$3" status=none'
	"$FX" --partitions "$uri" >out 2>err || fail "--partitions, LBA 1 unreadable: $(cat err)"
	cmp out good || fail "--partitions, LBA 1 unreadable: $(cat out)"
	fx_up --partition=2 "$uri" "$PWD/mp"
	cmp mp <(part_bytes disk.img 2) || fail "partition 2, LBA 1 unreadable"
	fx_down "$PWD/mp"
	echo $((size / 512 - 1)) >>bad
	bad --partitions "$uri"
	grep -q "reading the partition table: Input/output error$" err || fail "both headers unreadable: $(cat err)"
	bad --partition=2 "$uri" "$PWD/mp"
	grep -q "reading the partition table: Input/output error$" err || fail "both headers unreadable: $(cat err)"
	# the primary's entries (LBA 2 on) fail in their 4th sector, and the
	# backup header is zeros
	echo 5 >bad
	dd if=/dev/zero of=disk.img bs=512 seek=$((size / 512 - 1)) count=1 conv=notrunc status=none
	bad --partitions "$uri"
	grep -q "reading the partition table: Input/output error$" err || fail "entries unreadable: $(cat err)"
}

# a block device of 4096-byte logical sectors with a GPT that sgdisk wrote
# on it: LBAs count 4096 bytes; and a snapshot of its partition, committed
t_partition_4k() {
	local loop start sectors
	truncate -s 100M img; : >mp
	loop=$(losetup -b 4096 -f --show img) || fail "losetup -b 4096"
	track_loop "$loop"
	eq "$(blockdev --getss "$loop")" 4096 "the loop device's logical sector"
	sgdisk -n 1:0:+20M -n 2:0:+30M -c 2:data "$loop" >&2 || fail "sgdisk on $loop"
	"$FX" --partitions "$loop" >out 2>err || fail "--partitions $loop: $(cat err)"
	eq "$(head -n1 out)" "gpt partition table, 4096-byte sectors" "first line"
	eq "$(tail -n +3 out | awk '{ print $1, $2, $4, $6 }')" "$(sfdisk_rows "$loop")" "rows against sfdisk -d"
	start=$(part "$loop" 2 start); sectors=$(part "$loop" 2 sectors)
	eq $((sectors * 4096)) $((30 * MiB)) "partition 2's size in 4096-byte sectors"
	head -c $((30 * MiB)) /dev/urandom >data
	fx_up -w --partition=2 "$loop" "$PWD/mp"
	eq "$(stat -c %s mp)" $((30 * MiB)) "size of the export"
	dd if=data of=mp bs=1M conv=notrunc status=none || fail "dd into the partition"
	fx_down "$PWD/mp"
	cmp data <(dd if="$loop" bs=4096 skip="$start" count="$sectors" status=none) ||
		fail "partition 2 on the device"
	zeros "$loop" $(($(part "$loop" 1 start) * 4096)) $((20 * MiB))
	# a snapshot of the partition: the device untouched until the commit
	cp data expected
	head -c 65536 /dev/urandom >more; put expected 12345 more
	fx_up --partition=2 --snapshot="$PWD/p2.fx" "$loop" "$PWD/mp"
	put mp 12345 more
	cmp mp expected || fail "the snapshot"
	fx_down "$PWD/mp"
	cmp data <(dd if="$loop" bs=4096 skip="$start" count="$sectors" status=none) ||
		fail "the device changed under a snapshot"
	"$FX" --commit --snapshot="$PWD/p2.fx" "$loop" 2>err || fail "--commit: $(cat err)"
	refute "FILE left after the commit" [ -e p2.fx ]
	cmp expected <(dd if="$loop" bs=4096 skip="$start" count="$sectors" status=none) ||
		fail "the device after the commit"
	losetup -d "$loop"
}

# mbr_put IMAGE SECTOR:TYPE,START,SIZE[;...]...: a table sector (these
# entries in slots 1-4, and the signature) written at each SECTOR
mbr_put() {
	"$PY" - "$@" <<-'EOF' || fail "mbr_put $*"
	import struct, sys
	with open(sys.argv[1], 'r+b') as f:
	    for arg in sys.argv[2:]:
	        at, ents = arg.split(':')
	        b = bytearray(512)
	        for i, ent in enumerate(ents.split(';')):
	            t, start, size = (int(x, 0) for x in ent.split(','))
	            b[446 + 16 * i + 4] = t
	            struct.pack_into('<II', b, 446 + 16 * i + 8, start, size)
	        b[510:512] = b'\x55\xaa'
	        f.seek(int(at) * 512)
	        f.write(b)
	EOF
}

# MBR tables no partitioning tool writes but Linux reads (msdos.c), numbered
# as Linux and partx number them: two extended primaries, each chain in
# turn; an EBR holding two logical partitions and no link; an EBR whose
# link comes first (DR-DOS); entries of type 0 that have a size. On
# 728e558 partition 5 was the second chain's, or the link's extent.
t_mbr_chains() {
	local c
	: >mp
	for c in two-extended two-logical link-first type-0; do
		rm -f disk.img; truncate -s 100M disk.img
		case $c in
		two-extended) mbr_put disk.img '0:0x83,2048,2048;0x05,10000,10000;0x0f,30000,10000' \
			'10000:0x83,100,200' '30000:0x83,100,300' ;;
		two-logical) mbr_put disk.img '0:0x83,2048,2048;0x05,10000,10000' \
			'10000:0x83,100,200;0x83,400,200' ;;
		link-first) mbr_put disk.img '0:0x83,2048,2048;0x05,10000,10000' \
			'10000:0x05,1000,2000;0x83,100,200' '11000:0x83,50,100' ;;
		type-0) mbr_put disk.img '0:0x00,2048,2048;0x05,10000,10000' \
			'10000:0x00,100,200;0x05,1000,2000' '11000:0x83,50,100' ;;
		esac
		"$FX" --partitions disk.img >out 2>err || fail "--partitions, $c: $(cat err)"
		eq "$(tail -n +3 out | awk '{ print $1, $2, $4 }')" \
			"$(partx -g -o NR,START,SECTORS disk.img | awk '{ print $1, $2, $3 }')" \
			"$c: partitions against partx"
		head -c $((100 * 512)) /dev/urandom >data
		dd if=data of=disk.img bs=512 seek=10100 conv=notrunc status=none
		fx_up --partition=5 "$PWD/disk.img" "$PWD/mp"
		cmp <(head -c $((100 * 512)) mp) data || fail "$c: partition 5's first bytes"
		fx_down "$PWD/mp"
	done
}

# bad tables and bad combinations: one line naming what exists, nothing
# mounted, the image unchanged
t_partition_refusals() {
	local before
	mbr_img disk.img; : >mp
	before=$(sum disk.img)
	bad --partition=9 "$PWD/disk.img" "$PWD/mp"
	grep -q "no partition 9 (partitions: 1 2 3 5 6)" err || fail "no partition 9: $(cat err)"
	bad --partition=4 "$PWD/disk.img" "$PWD/mp"
	bad --partition=1 --offset=1M "$PWD/disk.img" "$PWD/mp"
	bad --partition=1 --size=1M "$PWD/disk.img" "$PWD/mp"
	bad -o partition=1,offset=4096 "$PWD/disk.img" "$PWD/mp"
	bad -g --partition=1 "$PWD/disk.img" "$PWD/mp"
	grep -q -- "partition.*contradict.*a partition keeps its size" err || fail "-g --partition: $(cat err)"
	bad --partition=0 "$PWD/disk.img" "$PWD/mp"
	bad --partition=x "$PWD/disk.img" "$PWD/mp"
	bad --partitions "$PWD/disk.img" "$PWD/mp"
	eq "$(sum disk.img)" "$before" "the image after the refusals"
	# cut short inside partition 6: 6 runs past the end, 5 is whole
	truncate -s $((($(part disk.img 6 start) + 100) * 512)) disk.img
	bad --partition=6 "$PWD/disk.img" "$PWD/mp"
	grep -q "partition 6 runs past the end .*(partitions: 1 2 3 5 6)" err || fail "past the end: $(cat err)"
	fx_up --partition=5 "$PWD/disk.img" "$PWD/mp"
	cmp mp <(part_bytes disk.img 5) || fail "partition 5 of the cut image"
	fx_down "$PWD/mp"
	# garbage, and a file too short to hold a table
	head -c $MiB /dev/urandom >disk.img; printf '\0\0' | dd of=disk.img bs=1 seek=510 conv=notrunc status=none
	bad --partition=1 "$PWD/disk.img" "$PWD/mp"
	grep -q "no partition table (MBR or GPT) that can be read" err || fail "garbage: $(cat err)"
	bad --partitions "$PWD/disk.img"
	grep -q "no partition table (MBR or GPT) that can be read" err || fail "--partitions, garbage: $(cat err)"
	# a boot sector: the signature, and code where a table would be
	"$PY" -c 'import sys; b = bytearray(sys.stdin.buffer.read(1 << 20))
b[0:11] = b"\xeb\x3c\x90MSDOS5.0"; b[446:510] = bytes((i * 37 + 11) % 256 for i in range(64))
b[510:512] = b"\x55\xaa"; sys.stdout.buffer.write(b)' </dev/zero >disk.img
	bad --partitions "$PWD/disk.img"
	grep -q "no partition table (MBR or GPT) that can be read" err || fail "--partitions, a boot sector: $(cat err)"
	head -c 100 /dev/urandom >disk.img
	bad --partitions "$PWD/disk.img"
	grep -q "no partition table (MBR or GPT) that can be read" err || fail "--partitions, 100 bytes: $(cat err)"
	# a broken extended chain: the partitions before it are still there
	mbr_img disk.img
	dd if=/dev/zero of=disk.img bs=512 seek="$(part disk.img 3 start)" count=1 conv=notrunc status=none
	"$FX" --partitions "$PWD/disk.img" >out 2>err || fail "--partitions with a broken chain: $(cat err)"
	eq "$(tail -n +3 out | awk '{ print $1 }' | tr '\n' ' ')" "1 2 3 " "numbers with a broken chain"
	bad --partition=5 "$PWD/disk.img" "$PWD/mp"
	grep -q "no partition 5 (partitions: 1 2 3)" err || fail "broken chain: $(cat err)"
}

# GPT sizes bounded as Linux bounds them (block/partitions/efi.c): entries
# of 128 bytes only, no more of them than 4 MiB holds. A primary rewritten
# with its entries 256 or 4096 bytes apart, or with 32769 or 65536
# entries, CRCs right and the backup gone, is no table; 32768 entries are
# one, and partition 2 is found in it
t_gpt_sizes() {
	local edit
	for edit in esize=256 esize=4096 count=32769 "esize=4096 count=65536" count=32768; do
		gpt_img disk.img 20
		"$PY" "$TOP/tests/gptedit.py" disk.img $edit || fail "gptedit.py $edit"
		if [ "$edit" = count=32768 ]; then
			"$FX" --partitions disk.img >out 2>err || fail "--partitions, $edit: $(cat err)"
			eq "$(tail -n +3 out | awk '{ print $1 }' | tr '\n' ' ')" "1 2 4 " "numbers, $edit"
			continue
		fi
		bad --partitions "$PWD/disk.img"
		grep -q "no partition table (MBR or GPT) that can be read" err ||
			fail "--partitions, $edit: $(cat err)"
	done
}

# the server's descriptor of PATH is open read-only
opened_ro() {
	local fd flags
	for fd in /proc/$FXPID/fd/*; do
		[ "$(readlink "$fd")" = "$1" ] || continue
		flags=$(awk '/^flags:/ { print $2 }' "/proc/$FXPID/fdinfo/${fd##*/}")
		[ $((8#$flags & 3)) -eq 0 ] || fail "the server holds $1 open for writing (flags $flags)"
		return 0
	done
	fail "the server does not hold $1 open"
}

# e2fsck through a snapshot of a damaged ext4 in partition 2 repairs it,
# the image unchanged; the FILE resumes, is refused for another image or
# while in use, and --commit makes the partition what the snapshot showed
t_snapshot_ext4() {
	local start sectors itable rc before f
	mbr_img disk.img; : >mp; : >mp2; mkdir fs
	start=$(part disk.img 2 start); sectors=$(part disk.img 2 sectors)
	fx_up -w --partition=2 "$PWD/disk.img" "$PWD/mp"
	mkfs.ext4 -q -F -b 1024 mp || fail "mkfs.ext4"
	track_mount "$PWD/fs"
	mount -o loop mp fs || fail "mount -o loop"
	seq 100000 >fs/seq; mkdir fs/dir; cp "$FX" fs/dir/fx
	umount fs
	itable=$(dumpe2fs mp 2>/dev/null | awk '/^Group 0:/ { g = 1 } g && /Inode table at/ { sub(/-.*/, "", $4); print $4; exit }')
	fx_down "$PWD/mp"
	[ -n "$itable" ] || fail "no inode table in dumpe2fs's output"
	# the primary superblock and the inode table's first block (the root
	# directory's inode) zeroed
	dd if=/dev/zero of=disk.img bs=1024 seek=$((start / 2 + 1)) count=1 conv=notrunc status=none
	dd if=/dev/zero of=disk.img bs=1024 seek=$((start / 2 + itable)) count=1 conv=notrunc status=none
	fx_up --partition=2 "$PWD/disk.img" "$PWD/mp"
	rc=0; e2fsck -fn mp >"$TESTDIR/fsck" 2>&1 || rc=$?
	[ $rc -ge 4 ] || fail "e2fsck -fn finds the damaged ext4 clean (exit $rc)"
	fx_down "$PWD/mp"
	cp --sparse=always disk.img damaged
	before=$(sum disk.img)
	fx_up --partition=2 --snapshot="$PWD/fix.fx" "$PWD/disk.img" "$PWD/mp"
	[ -f fix.fx ] || fail "FILE not created"
	eq "$(stat -c %A:%s mp)" "-rw-------:$((sectors * 512))" "mode and size of the snapshot"
	opened_ro "$PWD/disk.img"
	rc=0; e2fsck -fy mp >"$TESTDIR/fsck" 2>&1 || rc=$?
	cat "$TESTDIR/fsck" >&2
	[ $rc -ne 0 ] && [ $((rc & 12)) -eq 0 ] || fail "e2fsck -fy through the snapshot: exit $rc"
	e2fsck -fn mp >"$TESTDIR/fsck" 2>&1 || fail "e2fsck -fn after the repair: $(cat "$TESTDIR/fsck")"
	eq "$(sum disk.img)" "$before" "the image during the repair"
	mount -o loop,ro mp fs || fail "mount the repaired ext4"
	for f in fs/lost+found/*; do [ -f "$f" ] && seq 100000 | cmp -s - "$f" && break; done
	seq 100000 | cmp - "$f" || fail "the file is not in lost+found: $(ls -l fs/lost+found)"
	cmp "$FX" fs/lost+found/*/fx || fail "the directory is not in lost+found"
	umount fs
	cp mp repaired
	# in use: another export or a commit of the same FILE is refused
	refused --partition=2 --snapshot="$PWD/fix.fx" "$PWD/disk.img" "$PWD/mp2"
	grep -q "fix.fx: in use" err || fail "second user of FILE: $(cat err)"
	refute "commit of a FILE in use" "$FX" --commit --snapshot="$PWD/fix.fx" "$PWD/disk.img" 2>err
	fx_down "$PWD/mp"
	eq "$(sum disk.img)" "$before" "the image after the snapshot export"
	# resumed: the repaired view is there
	fx_up --partition=2 --snapshot="$PWD/fix.fx" "$PWD/disk.img" "$PWD/mp"
	cmp mp repaired || fail "the resumed snapshot"
	fx_down "$PWD/mp"
	# made for another source: another image, another partition
	cp --sparse=always disk.img other
	bad --partition=2 --snapshot="$PWD/fix.fx" "$PWD/other" "$PWD/mp"
	grep -q "made for another source" err || fail "another image: $(cat err)"
	bad --partition=5 --snapshot="$PWD/fix.fx" "$PWD/disk.img" "$PWD/mp"
	grep -q "made for another source" err || fail "another partition: $(cat err)"
	refute "commit into another image" "$FX" --commit --snapshot="$PWD/fix.fx" "$PWD/other" 2>err
	grep -q "made for another source" err || fail "commit into another image: $(cat err)"
	cmp other damaged || fail "the other image after a refused commit"
	eq "$(sum disk.img)" "$before" "the image after the refusals"
	# the commit: partition 2 is what the snapshot showed, nothing else moved
	"$FX" --commit --snapshot="$PWD/fix.fx" "$PWD/disk.img" >out 2>err || fail "--commit: exit $?: $(cat err)"
	refute "--commit wrote to stdout: $(cat out)" [ -s out ]
	grep -Eqx "fuseexport: committed [0-9.]+[BKMG] in [0-9]+ blocks to $PWD/disk.img" err ||
		fail "--commit's summary: $(cat err)"
	refute "FILE left after the commit" [ -e fix.fx ]
	refute "--commit mounted something" mounted "$PWD/mp"
	cmp repaired <(dd if=disk.img bs=512 skip="$start" count="$sectors" status=none) ||
		fail "partition 2 after the commit"
	same_but damaged disk.img "$start" "$sectors"
	fx_up --partition=2 "$PWD/disk.img" "$PWD/mp"
	e2fsck -fn mp >"$TESTDIR/fsck" 2>&1 || fail "e2fsck -fn after the commit: $(cat "$TESTDIR/fsck")"
	fx_down "$PWD/mp"
}

# xfs_repair through a snapshot of an xfs whose AG 0 headers were zeroed
t_snapshot_xfs() {
	local start sectors rc before
	gpt_img disk.img 320; : >mp; mkdir fs
	start=$(part disk.img 2 start); sectors=$(part disk.img 2 sectors)
	fx_up -w --partition=2 "$PWD/disk.img" "$PWD/mp"
	mkfs.xfs -q -f mp || fail "mkfs.xfs"
	track_mount "$PWD/fs"
	mount -o loop mp fs || fail "mount -o loop"
	seq 100000 >fs/seq; mkdir fs/dir; cp "$FX" fs/dir/fx
	umount fs
	fx_down "$PWD/mp"
	# AG 0's free space (AGF) and inode (AGI) headers: sectors 1 and 2
	dd if=/dev/zero of=disk.img bs=512 seek=$((start + 1)) count=2 conv=notrunc status=none
	fx_up --partition=2 "$PWD/disk.img" "$PWD/mp"
	rc=0; xfs_repair -n mp >"$TESTDIR/repair" 2>&1 || rc=$?
	[ $rc -ne 0 ] || fail "xfs_repair -n finds the damaged xfs clean"
	fx_down "$PWD/mp"
	before=$(sum disk.img)
	fx_up --partition=2 --snapshot="$PWD/fix.fx" "$PWD/disk.img" "$PWD/mp"
	xfs_repair mp >"$TESTDIR/repair" 2>&1 || fail "xfs_repair through the snapshot: $(tail "$TESTDIR/repair")"
	xfs_repair -n mp >"$TESTDIR/repair" 2>&1 || fail "xfs_repair -n after the repair: $(cat "$TESTDIR/repair")"
	mount -o loop,ro mp fs || fail "mount the repaired xfs"
	seq 100000 | cmp - fs/seq || fail "the file in the repaired xfs"
	cmp "$FX" fs/dir/fx || fail "the binary in the repaired xfs"
	umount fs
	cp mp repaired
	fx_down "$PWD/mp"
	eq "$(sum disk.img)" "$before" "the image after the snapshot export"
	fx_up --partition=2 --snapshot="$PWD/fix.fx" "$PWD/disk.img" "$PWD/mp"
	cmp mp repaired || fail "the resumed snapshot"
	fx_down "$PWD/mp"
	"$FX" --commit --snapshot="$PWD/fix.fx" "$PWD/disk.img" 2>err || fail "--commit: exit $?: $(cat err)"
	refute "FILE left after the commit" [ -e fix.fx ]
	cmp repaired <(dd if=disk.img bs=512 skip="$start" count="$sectors" status=none) ||
		fail "partition 2 after the commit"
	sgdisk -v disk.img >&2 || fail "sgdisk -v after the commit"
}

# a snapshot in memory: writes, punch and zero land there and read back;
# size fixed; the source, open read-only, never changes, and the changes
# are gone with the export
t_snapshot_memory() {
	local before s=$((64 * MiB))
	mkimg src 64; cp src expected; : >mp
	before=$(sum src)
	fx_fg -d --snapshot "$PWD/src" "$PWD/mp"
	grep -q '^fuseexport: passthrough off (a snapshot keeps its changes apart from the source)' fg.err ||
		fail "-d says: $(grep passthrough fg.err)"
	fx_down "$PWD/mp"
	fx_up --snapshot "$PWD/src" "$PWD/mp"
	eq "$(stat -c %A:%s mp)" "-rw-------:$s" "mode and size"
	opened_ro "$PWD/src"
	head -c 300000 /dev/urandom >data
	put mp 4097 data; put expected 4097 data
	put mp $((30 * MiB)) data conv=notrunc,fsync; put expected $((30 * MiB)) data
	put mp $((s - 300000)) data oflag=direct; put expected $((s - 300000)) data
	xio "$PWD/mp" "fpunch $((17 * MiB)) 1m" "fzero $((5 * MiB + 4096)) 128k" "fpunch 1000 3000" "fsync"
	head -c $MiB /dev/zero >z; put expected $((17 * MiB)) z
	head -c 131072 /dev/zero >z; put expected $((5 * MiB + 4096)) z
	head -c 3000 /dev/zero >z; put expected 1000 z
	eq "$("$PY" "$FXIO" pwrite mp $s 4096)" ENOSPC "pwrite at the end"
	refute "truncate resized a snapshot" truncate -s $((s / 2)) mp 2>/dev/null
	xio "$PWD/mp" "falloc $((40 * MiB)) 1m" "falloc -k $((s - 4096)) 1m"
	xio_err 'No space left' "$PWD/mp" "falloc $((s - 4096)) 1m"
	eq "$(stat -c %s mp)" $s "size"
	cmp mp expected || fail "reads"
	dd if=mp bs=1M iflag=direct status=none | cmp - expected || fail "O_DIRECT reads"
	eq "$("$PY" "$FXIO" mmap-read mp)" "$(sum expected)" "mmap read"
	eq "$(sum src)" "$before" "the source during the export"
	fx_down "$PWD/mp"
	eq "$(sum src)" "$before" "the source after the export"
	fx_up -o snapshot,queues=2 "$PWD/src" "$PWD/mp"
	cmp mp src || fail "a new snapshot still shows the last one's writes"
	put mp 0 data
	fx_down "$PWD/mp"
	eq "$(sum src)" "$before" "the source after -o snapshot"
}

# SEEK_DATA/SEEK_HOLE on a snapshot: data written into a hole of the
# sparse source, and holes punched into its data, as a file with the same
# changes has them
t_snapshot_seek() {
	local f layout before
	mkimg src 64; cp --sparse=always src model; : >mp
	layout=$(xfs_io -r -c "seek -a -r 0" src); before=$(sum src)
	fx_up --snapshot "$PWD/src" "$PWD/mp"
	seek_eq "seek -a -r 0" "seek -a -r before any change"
	for f in "$PWD/mp" model; do
		xio "$f" "pwrite -q $((8 * MiB)) 64k" "pwrite -q $((40 * MiB + 4096)) 4k" \
			"fpunch 0 64k" "fpunch $((17 * MiB + 128 * 1024)) 256k" "fpunch $((63 * MiB)) 1m"
	done
	xfs_io -r -c "seek -a -r 0" mp >&2
	seek_eq "seek -a -r 0" "seek -a -r after the changes" model
	eq "$(xfs_io -r -c "seek -d $((7 * MiB))" mp | awk '$1 == "DATA" { print $2 }')" $((8 * MiB)) "data written into a hole"
	eq "$(xfs_io -r -c "seek -h $((8 * MiB))" mp | awk '$1 == "HOLE" { print $2 }')" $((8 * MiB + 65536)) "the hole after it"
	eq "$(xfs_io -r -c "seek -d 0" mp | awk '$1 == "DATA" { print $2 }')" 65536 "the hole punched at 0"
	eq "$(xfs_io -r -c "seek -h $((63 * MiB))" mp | awk '$1 == "HOLE" { print $2 }')" $((63 * MiB)) "the last MiB punched"
	cmp mp model || fail "contents"
	fx_down "$PWD/mp"
	eq "$(xfs_io -r -c "seek -a -r 0" src)" "$layout" "the source's own data and holes"
	eq "$(sum src)" "$before" "the source"
}

# A snapshot of 1 TiB (a map of 4 MiB words): a read, a seek or a mapped
# read scans the map only as far as its own end, not to the end of the
# run it starts in, which a fresh snapshot's is: 20000 reads at 0 took
# 10 ms each on main (the whole map), about 200 s, against a second or
# two; the 60 s bound is for a stall, not a timing. SEEK_DATA still finds
# a block changed at 512 GiB and the hole after it
t_snapshot_big() {
	local out
	truncate -s 1T src; : >mp
	fx_up --cache=none --snapshot "$PWD/src" "$PWD/mp"
	head -c 4096 /dev/urandom >data
	put mp $((512 << 30)) data
	# (how fast: no timed assertion here; a read once scanned the whole map)
	out=$("$PY" -c 'import os; fd = os.open("mp", os.O_RDONLY)
for i in range(2000):
    assert os.pread(fd, 4096, 0) == bytes(4096)
print(os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 512 << 30, os.SEEK_HOLE),
      os.lseek(fd, 0, os.SEEK_HOLE))') || fail "reads of a 1 TiB snapshot (exit $?)"
	eq "$out" "$((512 << 30)) $(((512 << 30) + 4096)) 0" "SEEK_DATA, SEEK_HOLE"
	cmp data <(range mp $((512 << 30)) 4096) || fail "the block at 512 GiB"
	fx_down "$PWD/mp"
}

# a source nobody may write (a read-only bind mount): -w is refused, a
# snapshot works; its commit is refused and keeps FILE
snapshot_ro_ns() {
	local before
	mkdir ro; mkimg ro/src 16; cp ro/src expected; : >mp
	mount --bind ro ro; mount -o remount,bind,ro ro
	before=$(sum ro/src)
	refute "-w on a read-only source accepted" "$FX" -w "$PWD/ro/src" "$PWD/mp" 2>err
	fx_up --snapshot="$PWD/ro.fx" "$PWD/ro/src" "$PWD/mp"
	head -c $MiB /dev/urandom >data
	put mp $((3 * MiB + 100)) data; put expected $((3 * MiB + 100)) data
	cmp mp expected || fail "the snapshot of a read-only source"
	fx_down "$PWD/mp"
	eq "$(sum ro/src)" "$before" "the read-only source"
	refute "commit into a read-only source" "$FX" --commit --snapshot="$PWD/ro.fx" "$PWD/ro/src" 2>err
	eq "$(wc -l <err)" 1 "lines of the refusal"
	[ -f ro.fx ] || fail "a refused commit removed FILE"
	fx_up --snapshot="$PWD/ro.fx" "$PWD/ro/src" "$PWD/mp"
	cmp mp expected || fail "FILE after a refused commit"
	fx_down "$PWD/mp"
	umount ro
}
t_snapshot_ro_source() { in_ns snapshot_ro_ns; }

# FILE on a filesystem that fills up: the map's room is FILE's from its
# start, so a write whose data got in is flushed, and kept, even when the
# disk was full before the flush wrote the map piece naming it (a 4 GiB
# source: 32 map pieces; each write below lands in a piece of its own).
# A write that finds no room fails with ENOSPC and the last flush holds
snapshot_full_ns() {
	local out
	mkdir small; mount -t tmpfs -o size=2m tmpfs small
	truncate -s 4G src; : >mp
	fx_up --cache=none --snapshot="$PWD/small/s.fx" "$PWD/src" "$PWD/mp"
	out=$("$PY" - <<-'EOF'
	import os
	fd = os.open("mp", os.O_RDWR)
	os.pwrite(fd, b"A" * 4096, 0)
	os.fsync(fd)
	f = os.open("small/filler", os.O_WRONLY | os.O_CREAT)
	try:
	    while True:
	        os.write(f, b"x" * 65536)
	except OSError:
	    pass
	try:
	    while True:
	        os.write(f, b"x" * 4096)
	except OSError:
	    pass
	os.ftruncate(f, os.fstat(f).st_size - 3 * 4096)   # room for 3 blocks
	os.close(f)
	n = 0
	try:
	    for n in range(1, 10):
	        os.pwrite(fd, bytes([n]) * 4096, n * 4096 * 32768)
	except OSError as e:
	    print("write%d=%s" % (n, "ENOSPC" if e.errno == 28 else e))
	try:
	    os.fsync(fd)
	    print("fsync=ok")
	except OSError as e:
	    print("fsync=%s" % e)
	EOF
	) || fail "the writes: $out"
	eq "$(echo $out)" "write4=ENOSPC fsync=ok" "writes and the flush on a full disk"
	fx_down "$PWD/mp"
	rm small/filler
	fx_up --cache=none --snapshot="$PWD/small/s.fx" "$PWD/src" "$PWD/mp"
	# each block whole, as one byte (in hex), or "mixed"
	out=$("$PY" -c 'import os; fd = os.open("mp", os.O_RDONLY)
b = [os.pread(fd, 4096, n * 4096 * 32768) for n in range(5)]
print(" ".join(x[:1].hex() if x == x[:1] * 4096 else "mixed" for x in b))')
	eq "$out" "41 01 02 03 00" "the blocks resumed"
	fx_down "$PWD/mp"
	# a reserving fallocate reserves: the range's first writes find room
	# in FILE on a disk filled since
	rm small/s.fx; truncate -s 16M src16
	fx_up --cache=none --snapshot="$PWD/small/r.fx" "$PWD/src16" "$PWD/mp"
	xio "$PWD/mp" "falloc $((4 * MiB + 100)) $MiB"
	head -c 4M /dev/zero >small/filler 2>/dev/null || true
	head -c $((MiB + 100)) /dev/urandom >data
	put mp $((4 * MiB)) data
	xio "$PWD/mp" "fsync"
	cmp data <(range mp $((4 * MiB)) $((MiB + 100))) || fail "the reserved range"
	fx_down "$PWD/mp"
	umount small
}
t_snapshot_full() { in_ns snapshot_full_ns; }

# parallel writers on a snapshot: fio verify and the torture test, in
# memory and in FILE; the source never changes
t_snapshot_fio() {
	local before seed=${FX_SEED:-$RANDOM}
	mkimg src 64; : >mp
	before=$(sum src)
	fx_up -q 4 --passthrough=off --snapshot="$PWD/s.fx" "$PWD/src" "$PWD/mp"
	fio_run --ioengine=psync --rw=randrw
	fio_run --ioengine=libaio --iodepth=16 --direct=1 --rw=randrw --bs=64k
	cp mp copy
	fx_down "$PWD/mp"
	eq "$(sum src)" "$before" "the source after fio"
	fx_up -q 4 --passthrough=off --snapshot="$PWD/s.fx" "$PWD/src" "$PWD/mp"
	cmp mp copy || fail "the resumed snapshot after fio"
	fx_down "$PWD/mp"
	fx_up -q 4 --passthrough=off --snapshot "$PWD/src" "$PWD/mp"
	log "seed $seed (replay: FX_SEED=$seed)"
	"$PY" "$TOP/tests/torture.py" mp "$seed" "${FX_TORTURE_OPS:-1500}" 4 >&2 ||
		fail "torture, four processes, seed $seed"
	fx_down "$PWD/mp"
	eq "$(sum src)" "$before" "the source after the torture"
}

# a snapshot of a window at an offset that is no multiple of 4 KiB,
# committed: the changes land in the window and nowhere else; a commit
# run again from a copy of FILE (as after a failure) ends the same; bad
# commits are refused
# umount returns before the server has let go of FILE (here its last flush
# is held up 0.5 s): exporting FILE again, and committing it, right after
# umount wait for it instead of being refused as in use
t_snapshot_again() {
	mkimg src 8; cp src orig; : >mp
	head -c 65536 /dev/urandom >data
	fx_up --snapshot="$PWD/s.fx" --fault=op=flush,delay=500ms "$PWD/src" "$PWD/mp"
	put mp $MiB data
	umount mp
	"$FX" --snapshot="$PWD/s.fx" --fault=op=flush,delay=500ms "$PWD/src" "$PWD/mp" ||
		fail "FILE exported again right after umount: refused"
	track_pid "$(fx_pid "$PWD/mp")"
	cmp <(range mp $MiB 65536) data || fail "the snapshot exported again"
	umount mp
	"$FX" --commit --snapshot="$PWD/s.fx" "$PWD/src" 2>err || fail "a commit right after umount: $(cat err)"
	cmp <(range src $MiB 65536) data || fail "the commit's data"
	refute "FILE left after the commit" [ -e s.fx ]
}

# --commit to a block device held exclusively (mounted, or -w exported):
# refused with why and what to do, and that is to unmount it: the advice
# for an export ("or export it read-only") is none for a commit, which
# must write
t_commit_busy() {
	local loop
	mkimg img 16; : >mp; : >mp2
	loop=$(losetup -f --show img) || fail "losetup"
	track_loop "$loop"
	fx_up -w --snapshot="$PWD/snap" "$loop" "$PWD/mp"
	head -c 4096 /dev/urandom >data
	dd if=data of=mp bs=4k seek=1 conv=notrunc,fsync status=none
	fx_down "$PWD/mp"
	fx_up -w "$loop" "$PWD/mp2"
	refute "a commit to a block device held exclusively ran" "$FX" --commit --snapshot="$PWD/snap" "$loop" 2>err
	log "$(cat err)"
	grep -q "in use (mounted, or opened exclusively elsewhere): unmount it first" err || fail "the refusal says: $(cat err)"
	refute "the refusal of a commit says to export it read-only: $(cat err)" grep -q "export it read-only" err
	fx_down "$PWD/mp2"
	"$FX" --commit --snapshot="$PWD/snap" "$loop" 2>err || fail "the commit once free: $(cat err)"
	cmp -n 4096 -i 0:4096 data "$loop" || fail "the committed block"
	losetup -d "$loop"
}

t_snapshot_commit() {
	local off=$((3 * MiB + 512)) len=$((5 * MiB)) before
	mkimg src 32; cp src expected; : >mp
	before=$(sum src)
	fx_up --offset=$off --size=$len --snapshot="$PWD/w.fx" "$PWD/src" "$PWD/mp"
	eq "$(stat -c %s mp)" $len "size"
	# FILE is read and written, never mapped: a kernel with 16 or 64 KiB
	# pages refuses a mapping at the map's offset, 4096
	refute "the server maps FILE: $(grep w.fx "/proc/$FXPID/maps")" grep -q "/w.fx" "/proc/$FXPID/maps"
	cmp mp <(range src $off $len) || fail "reads"
	head -c 200000 /dev/urandom >data
	put mp 1 data; put expected $((off + 1)) data
	head -c 5000 data >d5; put mp $((len - 5000)) d5; put expected $((off + len - 5000)) d5
	xio "$PWD/mp" "fpunch $MiB 64k" "fzero $((2 * MiB)) 8k"
	head -c 65536 /dev/zero >z; put expected $((off + MiB)) z
	head -c 8192 /dev/zero >z; put expected $((off + 2 * MiB)) z
	cmp mp <(range expected $off $len) || fail "the window through the snapshot"
	fx_down "$PWD/mp"
	eq "$(sum src)" "$before" "the source before the commit"
	cp --sparse=always w.fx w.saved
	"$FX" --commit --snapshot="$PWD/w.fx" "$PWD/src" 2>err || fail "--commit: $(cat err)"
	refute "FILE left after the commit" [ -e w.fx ]
	cmp src expected || fail "the source after the commit"
	# 49 blocks from 1, 2 at the end, 16 punched, 2 zeroed: 69 of 4 KiB
	eq "$(cat err)" "fuseexport: committed 276K in 69 blocks to $PWD/src" "--commit's summary"
	# on a terminal, progress too: bytes of all and a rate
	mv w.saved w.fx; cp --sparse=always w.fx w.saved
	script -qec "$FX --commit --snapshot=$PWD/w.fx $PWD/src" /dev/null >tty.out 2>&1 ||
		fail "--commit on a terminal: $(cat tty.out)"
	grep -aq "fuseexport: committing: [0-9.]*[BKMG] of 276K, [0-9.]*[BKMG]/s" tty.out ||
		fail "no progress on a terminal: $(od -c tty.out | head)"
	grep -aq "fuseexport: committed 276K in 69 blocks to $PWD/src" tty.out ||
		fail "no summary on a terminal: $(cat tty.out)"
	cmp src expected || fail "the source after the commit on a terminal"
	mv w.saved w.fx
	# a symlink to FILE is refused, as by an export (removing the link
	# would leave FILE to be resumed later), and a FIFO without a wait
	ln -s w.fx link.fx; mkfifo fifo.fx
	bad --commit --snapshot="$PWD/link.fx" "$PWD/src"
	[ -e w.fx ] && [ -L link.fx ] || fail "a commit through a symlink took FILE"
	bad --commit --snapshot="$PWD/fifo.fx" "$PWD/src"
	# FILE's removal is made durable: fsync of its directory after it
	strace -f -qq -o trace -e trace=unlink,unlinkat,fsync \
		"$FX" --commit --snapshot="$PWD/w.fx" "$PWD/src" 2>err || fail "--commit again: $(cat err)"
	awk '/unlink.*w\.fx/ { u = 1 } u && /fsync\(/ { f = 1 } END { exit !f }' trace ||
		fail "no fsync after FILE's removal: $(cat trace)"
	cmp src expected || fail "the source after the second commit"
	before=$(sum src)
	bad --commit --snapshot="$PWD/w.fx" "$PWD/src"		# gone now
	bad --commit --snapshot "$PWD/src"
	grep -q -- "--commit: needs --snapshot=FILE" err || fail "commit without FILE: $(cat err)"
	bad --commit "$PWD/src"
	head -c 65536 /dev/urandom >junk.fx
	bad --commit --snapshot="$PWD/junk.fx" "$PWD/src"
	grep -q "not a snapshot file" err || fail "junk FILE: $(cat err)"
	bad --snapshot="$PWD/junk.fx" "$PWD/src" "$PWD/mp"
	# a FILE cut short after its header
	fx_up --snapshot="$PWD/cut.fx" "$PWD/src" "$PWD/mp"
	put mp 0 data
	fx_down "$PWD/mp"
	truncate -s 4096 cut.fx
	bad --commit --snapshot="$PWD/cut.fx" "$PWD/src"
	bad --snapshot="$PWD/cut.fx" "$PWD/src" "$PWD/mp"
	# its header alone, as a crash while FILE was made leaves it: new
	head -c 48 cut.fx >head.fx
	fx_up --snapshot="$PWD/head.fx" "$PWD/src" "$PWD/mp"
	cmp mp src || fail "a FILE of its header alone, resumed"
	fx_down "$PWD/mp"
	eq "$(stat -c %s head.fx)" $((2 * 4096 + 32 * MiB)) "the length of a FILE of its header alone, resumed"
	# a file of zeros (say an image whose first sector is zeros) is no FILE
	head -c 65536 /dev/zero >zero.fx
	bad --snapshot="$PWD/zero.fx" "$PWD/src" "$PWD/mp"
	cmp zero.fx <(head -c 65536 /dev/zero) || fail "a file of zeros given as FILE changed"
	# a map that names a block past the source's end (its 8192nd)
	fx_up --snapshot="$PWD/far.fx" "$PWD/src" "$PWD/mp"
	put mp 0 data
	fx_down "$PWD/mp"
	printf '\001' | dd of=far.fx bs=1 seek=$((4096 + 1100)) conv=notrunc status=none
	bad --commit --snapshot="$PWD/far.fx" "$PWD/src"
	grep -q "its map names blocks past the source's end" err || fail "a map past the end: $(cat err)"
	bad --snapshot="$PWD/far.fx" "$PWD/src" "$PWD/mp"
	grep -q "its map names blocks past the source's end" err || fail "a map past the end: $(cat err)"
	bad -g --snapshot "$PWD/src" "$PWD/mp"
	bad --snapshot --passthrough=on "$PWD/src" "$PWD/mp"
	eq "$(sum src)" "$before" "the source after the refusals"
}

# The snapshot's FILE on a disk that loses power: FILE is the file of an
# export with --write-cache=volatile, crashed (plain or torn) through its
# FIFO in each of four rounds, then the snapshot resumed on what the disk
# kept. Between flushes, the crash comes after writes whose dirty pages
# were pushed out (as write-back may at any time); during one, strace holds
# the server at the fdatasync after it wrote FILE's map. Every sector of
# the resumed snapshot must hold its bytes as of the last flush that
# completed or bytes written since, never zeros that nobody wrote
t_snapshot_crash() {
	local when=$1 round a lower upper tracer
	local areas="0:$((8 * MiB)),$((130 * MiB)):$((8 * MiB)),$((264 * MiB)):$((8 * MiB))"
	truncate -s 272M src
	for a in 0 130 264; do
		dd if=/dev/urandom of=src bs=1M seek=$a count=8 conv=notrunc status=none
	done
	cp --sparse=always src base; : >writes; : >disk.img; : >disk; : >mp
	for round in 1 2 3 4 5; do
		fx_up -g --write-cache=volatile --control="$PWD/ctl" --seed=$round "$PWD/disk.img" "$PWD/disk"
		lower=$FXPID
		fx_up --cache=none --snapshot="$PWD/disk" "$PWD/src" "$PWD/mp"
		upper=$FXPID
		"$PY" "$TOP/tests/snapcrash.py" check mp base writes "$areas" >&2 ||
			fail "round $round: the snapshot resumed after the crash"
		[ $round = 5 ] && break
		if [ "$when" = during ]; then
			strace -f -qq -o trace -e trace=pwrite64,fdatasync \
				-e inject=fdatasync:delay_enter=300000 -p "$upper" 2>/dev/null &
			tracer=$!; track_pid $tracer
			for a in $(seq 50); do grep -q . trace 2>/dev/null && break; xio "$PWD/mp" "fsync"; sleep 0.1; done
		fi
		STRACE_LOG=$PWD/trace "$PY" "$TOP/tests/snapcrash.py" run mp base writes "$areas" \
			"$PWD/ctl" "$PWD/disk" "$when" $round >&2 || fail "round $round: the writes and the crash"
		[ "$when" = during ] && { kill $tracer; wait $tracer || true; rm trace; }
		umount mp || fail "umount the snapshot"
		wait_gone $upper || fail "the snapshot's server still runs after umount"
		FXPID=$lower; fx_down "$PWD/disk"
	done
	FXPID=$upper; fx_down "$PWD/mp"
	FXPID=$lower; fx_down "$PWD/disk"
}

# NBD sources: real servers (qemu-nbd, nbdkit, nbd-server) on unix sockets and
# loopback, started by each test and stopped by cleanup_all (our_servers)

# wait_socket PATH: fail unless the server's unix socket appears
wait_socket() {
	local i
	for i in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
	fail "no server socket $1: $(cat "$TESTDIR/nbd.err" 2>/dev/null)"
}

# wait_port PORT: fail unless something listens on 127.0.0.1:PORT or [::1]:PORT
wait_port() {
	local i
	for i in $(seq 100); do
		ss -Hltn "sport = :$1" | grep -q . && return 0
		sleep 0.05
	done
	fail "nothing listens on port $1: $(cat "$TESTDIR/nbd.err" 2>/dev/null)"
}

free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# qnbd IMAGE [QEMU-NBD OPTIONS...]: qemu-nbd serving IMAGE (raw, holes
# punched on request) on ./nbd.sock unless the options say where; NBDPID
qnbd() {
	local img=$PWD/$1; shift
	case " $* " in *" -b "*|*" -p "*) ;; *) rm -f nbd.sock; set -- -k "$PWD/nbd.sock" "$@" ;; esac
	qemu-nbd -f raw -t -e 32 --discard=unmap "$@" "$img" 2>>"$TESTDIR/nbd.err" &
	NBDPID=$!
	case " $* " in *" -k "*) wait_socket "$PWD/nbd.sock" ;; esac
}

# nbdk ARGS...: nbdkit on ./nbd.sock with these plugin (and filter) args; NBDPID
nbdk() {
	rm -f nbd.sock
	nbdkit -f -U "$PWD/nbd.sock" "$@" 2>>"$TESTDIR/nbd.err" &
	NBDPID=$!
	wait_socket "$PWD/nbd.sock"
}

# the whole behaviour of a writable NBD export against its image
t_nbd_qemu() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock"
	mkimg src 64; cp src expected; : >mp
	qnbd src
	fx_up $1 -w "$uri" "$PWD/mp"
	eq "$(stat -c %s mp)" $((64 * MiB)) "size"
	eq "$(stat -c %A mp)" "-rw-------" "writable mode"
	cmp src mp || fail "cmp"
	dd if=mp bs=1M iflag=direct status=none | cmp - src || fail "dd iflag=direct"
	cmp <(range mp 12345 777777) <(range src 12345 777777) || fail "unaligned read"
	head -c 300000 /dev/urandom >data
	put mp 4097 data; put expected 4097 data
	put mp $((64 * MiB - 300000)) data oflag=direct; put expected $((64 * MiB - 300000)) data
	writeback "$1" ||	# there, refused at write-back: t_writeback_past_end
		eq "$("$PY" "$FXIO" pwrite mp $((64 * MiB)) 4096)" ENOSPC "pwrite at the end"
	cmp mp expected || fail "read back through the export"
	xio "$PWD/mp" "fsync" "fdatasync"
	fio_run --ioengine=psync
	fio_run --ioengine=libaio --iodepth=16 --direct=1 --rw=randrw --bs=64k
	cp mp copy
	fx_down "$PWD/mp"
	cmp src copy || fail "the image after fio"
}

# nbd:// over 127.0.0.1 and [::1], named exports, the default port's syntax
t_nbd_tcp() {
	local port
	mkimg src 32; : >mp
	port=$(free_port)
	qnbd src -b 127.0.0.1 -p "$port" -x disk
	wait_port "$port"
	fx_up $1 "nbd://127.0.0.1:$port/disk" "$PWD/mp"
	cmp src mp || fail "cmp over 127.0.0.1"
	fx_down "$PWD/mp"
	refute "a missing export accepted" "$FX" "nbd://127.0.0.1:$port/nosuch" "$PWD/mp" 2>err
	grep -q "nosuch" err || fail "the refusal does not name the export: $(cat err)"
	kill "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	if ip -6 addr show dev lo 2>/dev/null | grep -q '::1'; then
		port=$(free_port)
		qnbd src -b ::1 -p "$port" -x 'a disk'
		wait_port "$port"
		fx_up $1 -w "nbd://[::1]:$port/a%20disk" "$PWD/mp"
		cmp src mp || fail "cmp over [::1]"
		fx_down "$PWD/mp"
	else
		log "no ::1 here: IPv6 not tried"
	fi
}

# with -q N and CAN_MULTI_CONN, N connections; without it one carries all
t_nbd_multi_conn() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock"
	mkimg src 64; : >mp
	nbdk file "$PWD/src"
	fx_fg -d -q 4 -w "$uri" "$PWD/mp"
	grep -q "4 connections" fg.err || fail "-q 4 on a multi-conn server: $(head -n 1 fg.err)"
	eq "$(ss -Hx | grep -c "$PWD/nbd.sock")" 4 "the server's connections"
	fio_run --ioengine=psync
	fx_down "$PWD/mp"
	kill "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	nbdk --filter=multi-conn file "$PWD/src" multi-conn-mode=disable
	fx_fg -d -q 4 -w "$uri" "$PWD/mp"
	grep -q "1 connection," fg.err || fail "-q 4 without multi-conn: $(head -n 1 fg.err)"
	# many requests in flight on the one connection: parallel fio is not serialised
	fio_run --ioengine=libaio --iodepth=16 --direct=1
	fx_down "$PWD/mp"
}

t_nbd_ext4() {
	mkdir fs; truncate -s 64M src; : >mp
	qnbd src
	fx_up $1 -w "nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	mkfs.ext4 -q -F mp || fail "mkfs.ext4 on the export"
	track_mount "$PWD/fs"
	mount -o loop mp fs || fail "mount -o loop"
	head -c $((8 * MiB)) /dev/urandom >fs/big
	cp "$FX" fs/fx; seq 100000 >fs/seq
	sync
	umount fs || fail "umount the ext4"
	e2fsck -fn mp >"$TESTDIR/fsck" 2>&1 || fail "e2fsck -fn: $(cat "$TESTDIR/fsck")"
	fx_down "$PWD/mp"
	e2fsck -fn src >"$TESTDIR/fsck" 2>&1 || fail "e2fsck -fn on the image: $(cat "$TESTDIR/fsck")"
}

# punch leaves a hole in the server's image; zero range reads as zeros;
# SEEK_DATA/SEEK_HOLE come from base:allocation
t_nbd_punch_seek() {
	dd if=/dev/urandom of=src bs=1M count=8 status=none; : >mp
	qnbd src
	fx_up $1 -w "nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	xio "$PWD/mp" "fpunch $MiB $MiB" "fzero $((4 * MiB)) 64k" "fpunch 12345 1000"
	zeros mp $MiB $MiB
	zeros mp $((4 * MiB)) 65536
	zeros mp 12345 1000
	qemu-img map --output=json -f raw src >map.json
	grep -q "\"start\": $MiB, \"length\": $MiB,.*\"data\": false" map.json ||
		fail "qemu-img map shows no hole at 1 MiB: $(cat map.json)"
	xfs_io -r -c "seek -h 0" -c "seek -d $MiB" mp >seek.out
	grep -q "HOLE.*$MiB" seek.out || fail "SEEK_HOLE: $(cat seek.out)"
	grep -q "DATA.*$((2 * MiB))" seek.out || fail "SEEK_DATA: $(cat seek.out)"
	cp mp copy
	fx_down "$PWD/mp"
	cmp src copy || fail "the image"
}

# zeroing through WRITE_ZEROES within the server's maximum block size (or
# 32 MiB where it gives none), and by written zeros where the server refuses
# WRITE_ZEROES or lacks it; nbdkit's log shows every request that came
t_nbd_zero_split() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" max args
	: >mp
	for max in $MiB none; do
		args=(--filter=log memory 96M logfile="$PWD/nbd.log")
		[ $max = none ] || args=(--filter=blocksize-policy "${args[@]}" blocksize-maximum=$max)
		rm -f nbd.log
		nbdk "${args[@]}"
		fx_up $1 -w "$uri" "$PWD/mp"
		xio "$PWD/mp" "pwrite -S 0x5a 0 96m" "fsync" "fzero $MiB $((80 * MiB))" "fpunch $((90 * MiB)) 5m"
		zeros mp $MiB $((80 * MiB))
		zeros mp $((90 * MiB)) $((5 * MiB))
		[ $max = none ] && max=$((32 * MiB))
		"$PY" -c 'import re, sys
n = [int(c, 16) for c in re.findall(r" Zero .*?count=0x([0-9a-f]+)", open("nbd.log").read())]
print(sum(n), sum(k > int(sys.argv[1]) for k in n))' $max >zero.sum
		eq "$(cat zero.sum)" "$((85 * MiB)) 0" "bytes zeroed by WRITE_ZEROES, requests over $max"
		eq "$(head -c $MiB mp | tr -d Z | wc -c)" 0 "the bytes before the zeroed range"
		fx_down "$PWD/mp"
		kill "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	done
	for args in "--filter=nozero memory 16M" \
		    "--filter=error memory 16M error-zero=EINVAL error-zero-rate=100%"; do
		nbdk $args
		fx_up $1 -w "$uri" "$PWD/mp"
		xio "$PWD/mp" "pwrite -S 0x5a 0 16m" "fsync" "fzero $MiB 8m" "fpunch $((10 * MiB)) 3m" "fzero 12345 100000"
		zeros mp $MiB $((8 * MiB))
		zeros mp $((10 * MiB)) $((3 * MiB))
		zeros mp 12345 100000
		eq "$(head -c 12345 mp | tr -d Z | wc -c)" 0 "the bytes before the zeroed ranges ($args)"
		eq "$(tail -c $((3 * MiB)) mp | tr -d Z | wc -c)" 0 "the bytes after them ($args)"
		fx_down "$PWD/mp"
		kill "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	done
}

# the server killed and restarted under a running fio verify: the requests
# in flight are sent again, nothing acknowledged is lost, no read or write
# fails; flushes do from then on (fio's writes were not yet flushed when
# the server died, and fuseexport cannot tell that qemu-nbd's page cache
# kept them), and so the server's exit status is 1
t_nbd_reconnect() {
	mkimg src 64; : >mp
	qnbd src
	fx_fg -d -w --retry=20 "nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	fio --name=verify --filename="$PWD/mp" --rw=randwrite --bs=4k --size=16M \
		--offset_increment=16M --numjobs=4 --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --group_reporting --minimal --ioengine=psync \
		--loops=4 >fio.out 2>&1 &
	local fio=$! i
	sleep 1
	kill -KILL "$NBDPID"
	sleep 1
	[ -d "/proc/$fio" ] || fail "fio ended before the server came back: $(cat fio.out)"
	qnbd src
	sleep 1
	kill -KILL "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	qnbd src
	wait "$fio" || fail "fio verify across the reconnects: $(cat fio.out)"
	grep -q "connection 0 lost" fg.err || fail "-d does not log the loss: $(cat fg.err)"
	grep -q "made again" fg.err || fail "-d does not log the reconnect: $(cat fg.err)"
	grep -q "not yet flushed" fg.err || fail "flushes not said to fail: $(cat fg.err)"
	cp mp copy
	umount mp || fail "umount"
	wait_gone "$FXPID" 10 || fail "server still running 10s after umount"
	refute "the server said its last flush worked" wait "$FXPID"
	cmp src copy || fail "the image after the reconnects"
}

# a server restarted with writes it acknowledged and never flushed (nbdkit
# memory: they are gone): the reconnect cannot tell, so no flush says they
# are safe; writes that a flush covered before the loss do not count. One
# open held by a client told what to do on a pipe: a shell's own copy of
# it would flush at every close, even a server's exit, and wait there for
# the server it was about to start.
t_nbd_lost_unflushed() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" reply
	: >mp
	nbdk memory 16M
	fx_fg -w --cache=none --retry=20 "$uri" "$PWD/mp"
	coproc CLIENT { "$PY" -u -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for line in sys.stdin:
    what, _, text = line.strip().partition(" ")
    try:
        os.write(fd, text.encode()) if what == "write" else os.fsync(fd)
        print("ok")
    except OSError as e:
        print(e.strerror)
' "$PWD/mp"; }
	track_pid $CLIENT_PID
	client() { echo "$*" >&"${CLIENT[1]}"; read -r reply <&"${CLIENT[0]}"; }
	client write flushed; eq "$reply" ok "a write"
	client fsync; eq "$reply" ok "the first fsync"
	kill -KILL "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	nbdk memory 16M
	client fsync; eq "$reply" ok "an fsync after a restart with every write flushed"
	client write lost; eq "$reply" ok "a write"
	kill -KILL "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	nbdk memory 16M
	client fsync; eq "$reply" "Input/output error" "an fsync after a restart lost a write never flushed"
	client fsync; eq "$reply" "Input/output error" "the next fsync"
	eq "$(head -c 11 mp | tr -d '\0')" "" "what the restarted server holds"
	grep -q "not yet flushed" "$TESTDIR/fg.err" || fail "not said: $(cat "$TESTDIR/fg.err")"
	exec {CLIENT[1]}>&-
	wait $CLIENT_PID
	umount mp || fail "umount"
	wait_gone "$FXPID" 10 || fail "server still running 10s after umount"
	refute "the server said its last flush worked" wait "$FXPID"
}

# a reconnect may bring other bytes (the server restarted over a changed
# image): the kernel's cache of the export is dropped, so reads see them
t_nbd_cache_reconnect() {
	local i
	mkimg src 8; : >mp
	qnbd src
	fx_fg -d --cache=read --retry=20 "nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	dd if=mp of=before bs=64k count=1 status=none
	cmp -n 65536 src before || fail "the first read"
	kill -KILL "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	dd if=/dev/urandom of=src bs=64k count=1 conv=notrunc status=none
	qnbd src
	# a read the cache cannot answer meets the lost connection
	dd if=mp of=/dev/null bs=4k skip=100 count=1 iflag=direct status=none ||
		fail "a read after the restart: $(cat fg.err)"
	for i in $(seq 50); do
		grep -q "cache of it dropped" fg.err && break
		sleep 0.1
	done
	grep -q "made again" fg.err || fail "no reconnect: $(cat fg.err)"
	dd if=mp of=after bs=64k count=1 status=none
	cmp -n 65536 src after || fail "reads after the reconnect still see what was cached before"
	fx_down "$PWD/mp"
}

# nbd_mixed MOUNTPOINT SECONDS: 12 threads, half of them O_DIRECT, each
# alternating 1 MiB pwrites and preads of its own blocks (checked) for
# SECONDS; fails if any thread is stuck 30 s after the end
nbd_mixed() {
	timeout -s KILL $(($2 + 60)) "$PY" - "$1" "$2" <<'PYEOF' || fail "1 MiB reads and writes from 12 threads: $(cat "$TESTDIR/fg.err")"
import mmap, os, sys, threading, time
path, seconds = sys.argv[1], float(sys.argv[2])
size, MiB = os.stat(path).st_size, 1 << 20
end, errors, stuck = time.monotonic() + seconds, [], []
def client(i):
    try:
        fd = os.open(path, os.O_RDWR | (os.O_DIRECT if i % 2 else 0))
        out, back = mmap.mmap(-1, MiB), mmap.mmap(-1, MiB)
        blocks = range(i, size // MiB, 12)
        k = 0
        while time.monotonic() < end:
            at = blocks[k % len(blocks)] * MiB
            out[:] = bytes([i + 1]) * (MiB - 8) + k.to_bytes(8, "little")
            if os.pwritev(fd, [out], at) != MiB or os.preadv(fd, [back], at) != MiB:
                raise OSError("short I/O")
            if back[:] != out[:]:
                raise OSError(f"block {at // MiB} read back other bytes")
            k += 1
        os.close(fd)
    except OSError as e:
        errors.append(f"thread {i}: {e}")
threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(12)]
for t in threads:
    t.start()
for t in threads:
    t.join(max(0, end + 30 - time.monotonic()))
stuck = sum(t.is_alive() for t in threads)
print("\n".join(errors + ([f"{stuck} threads stuck"] if stuck else [])), file=sys.stderr)
sys.stderr.flush()
os._exit(1 if errors or stuck else 0)
PYEOF
}

# many callers of one connection, a server that answers one request at a
# time: whoever holds the role of reading replies, the role is never lost
# (a caller inside its own send missed the hand-on: nobody read replies,
# the server stopped reading, every client hung)
t_nbd_many_callers() {
	: >mp
	nbdk --filter=noparallel memory 256M serialize=requests
	fx_fg -w -q 8 --cache=none "nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	nbd_mixed "$PWD/mp" 5
	fx_down "$PWD/mp"
	kill "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	truncate -s 256M src
	qnbd src
	fx_fg -w -q 24 --cache=none "nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	nbd_mixed "$PWD/mp" 5
	fx_down "$PWD/mp"
}

# the server gone for good: requests fail with EIO after --retry, no hang
t_nbd_gone() {
	local t0 t1
	mkimg src 8; : >mp
	qnbd src
	fx_up $1 --retry=2 "nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	cmp src mp || fail "cmp"
	kill -KILL "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	t0=$(date +%s)
	refute "a read with the server gone succeeded" timeout 30 dd if=mp of=/dev/null bs=4k count=1 iflag=direct status=none 2>err
	t1=$(date +%s)
	grep -q "Input/output error" err || fail "the read failed with: $(cat err)"
	[ $((t1 - t0)) -le 10 ] || fail "the read took $((t1 - t0)) s with --retry=2"
	# back again: the export works again
	qnbd src
	for i in $(seq 50); do dd if=mp of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null && break; sleep 0.2; done
	cmp src mp || fail "cmp once the server is back"
	fx_down "$PWD/mp"
}

# A TCP peer gone silent (its host down, a cable cut: no reply, not even a
# reset; here the namespace's lo taken down): keepalives and a user timeout
# see it gone within 30 s, then --retry runs out and the read fails with
# EIO. Without them the read waited out TCP's 15 minutes of retransmits.
nbd_dead_peer_ns() {
	local port rc
	ip link set lo up
	mkimg src 8; : >mp
	port=$(free_port)
	qnbd src -b 127.0.0.1 -p "$port"
	wait_port "$port"
	fx_up $1 --retry=2 "nbd://127.0.0.1:$port" "$PWD/mp"
	cmp src mp || fail "cmp"
	ip link set lo down
	rc=0; timeout 100 dd if=mp of=/dev/null bs=4k count=1 skip=100 iflag=direct \
		status=none 2>err || rc=$?
	[ $rc -ne 124 ] || fail "a read from a silent peer still waits after 100 s"
	grep -q "Input/output error" err || fail "the read failed with: $(cat err)"
	ip link set lo up
	for i in $(seq 50); do dd if=mp of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null && break; sleep 0.2; done
	cmp src mp || fail "cmp once the peer answers again"
	fx_down "$PWD/mp"
}
t_nbd_dead_peer() { unshare -m -n --propagation private bash -c 'set -e; "$@"' _ nbd_dead_peer_ns "$@"; }

# wait_said FILE TEXT PID: fail unless TEXT appears in FILE while PID runs
wait_said() {
	local i
	for i in $(seq 300); do
		grep -q "$2" "$1" && return 0
		[ -d "/proc/$3" ] || break
		sleep 0.1
	done
	grep -q "$2" "$1" || fail "not said while waiting: '$2': $(cat "$1")"
}

# what a user waits for is said while they wait: a server that greets no
# second client (qemu-nbd without -e), a lost connection, its return
t_nbd_said() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" pid
	mkimg src 8; : >mp; : >mp2
	qnbd src -e 1
	fx_up $1 "$uri" "$PWD/mp"
	"$FX" "$uri" "$PWD/mp2" 2>second.err & pid=$!
	track_pid $pid
	wait_said second.err "no greeting from the server yet" $pid
	[ -d /proc/$pid ] || fail "said only once it gave up: $(cat second.err)"
	grep -q -- "-e N" second.err || fail "what it usually means: $(cat second.err)"
	refute "a second export of a one-client server succeeded" wait $pid
	grep -q "sent no greeting in" second.err || fail "the refusal: $(cat second.err)"
	fx_down "$PWD/mp"
	kill -KILL "$NBDPID"; wait "$NBDPID" 2>/dev/null || :

	qnbd src
	fx_fg --retry=60 "$uri" "$PWD/mp"
	cmp src mp || fail "cmp"
	kill -KILL "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	dd if=mp of=/dev/null bs=4k count=1 skip=7 iflag=direct status=none 2>read.err & pid=$!
	wait_said "$TESTDIR/fg.err" "connection to the server was lost.*wait up to 60 s" $pid
	[ -d /proc/$pid ] || fail "the read did not wait for the server: $(cat read.err)"
	qnbd src
	wait $pid || fail "the read once the server is back: $(cat read.err)"
	wait_said "$TESTDIR/fg.err" "connection to the server is back" $FXPID
	eq "$(grep -c "was lost" "$TESTDIR/fg.err")" 1 "losses said"
	fx_down "$PWD/mp"
}

# a read-only server: -w refused with one line, a read-only export works
t_nbd_readonly() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" before
	mkimg src 16; : >mp
	before=$(sum src)
	qnbd src -r
	bad -w "$uri" "$PWD/mp"
	grep -q "read-only" err || fail "the refusal: $(cat err)"
	fx_up $1 "$uri" "$PWD/mp"
	eq "$(stat -c %A mp)" "-r--------" "read-only mode"
	cmp src mp || fail "cmp"
	refute "a write succeeded" dd if=/dev/zero of=mp bs=4k count=1 conv=notrunc status=none 2>/dev/null
	fx_down "$PWD/mp"
	eq "$(sum src)" "$before" "image"
}

# nbdkit's memory plugin (writable, sizes not a multiple of 512) and
# sparse-random (data and holes, compared with qemu-img's own NBD client)
t_nbd_nbdkit() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" s=1000001
	: >mp
	nbdk memory size=$s
	fx_up $1 -w "$uri" "$PWD/mp"
	eq "$(stat -c %s mp)" $s "size"
	head -c $s /dev/urandom >expected
	dd if=expected of=mp bs=64k conv=notrunc status=none || fail "write the whole export"
	cmp mp expected || fail "read back"
	writeback "$1" ||	# there, refused at write-back: t_writeback_past_end
		eq "$("$PY" "$FXIO" pwrite mp $((s - 10)) 100 0x41)" 10 "bytes written by a pwrite straddling the end"
	fx_down "$PWD/mp"
	kill "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	nbdk sparse-random size=64M seed=1234 percent=30 runlength=524288
	qemu-img convert -f raw -O raw "$uri" ref || fail "qemu-img convert from nbdkit"
	fx_up $1 "$uri" "$PWD/mp"
	cmp mp ref || fail "cmp with qemu-img's copy"
	"$PY" - "$PWD/mp" <<-'PY' >ours.txt || fail "walking SEEK_DATA/SEEK_HOLE"
		import os, sys
		fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size; pos = 0
		while pos < size:
		    try: d = os.lseek(fd, pos, os.SEEK_DATA)
		    except OSError: break
		    h = os.lseek(fd, d, os.SEEK_HOLE); print(d, h); pos = h
	PY
	qemu-img map --output=json -f raw "$uri" | "$PY" -c '
import json, sys
runs = []
for m in json.load(sys.stdin):
    if not m["data"]: continue
    if runs and runs[-1][1] == m["start"]: runs[-1][1] += m["length"]
    else: runs.append([m["start"], m["start"] + m["length"]])
for r in runs: print(r[0], r[1])' >theirs.txt
	[ "$(wc -l <ours.txt)" -gt 2 ] || fail "sparse-random shows no holes: $(cat ours.txt)"
	cmp ours.txt theirs.txt || fail "SEEK_DATA/SEEK_HOLE differ from qemu-img map"
	fx_down "$PWD/mp"
}

# a server that takes only whole 4 KiB blocks (at most 64 KiB at once):
# unaligned reads and writes are aligned, read-modify-written and split
t_nbd_block_size() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock"
	: >mp
	nbdk --filter=blocksize-policy memory size=16M blocksize-error-policy=error \
		blocksize-minimum=4096 blocksize-preferred=65536 blocksize-maximum=65536
	fx_up $1 -w "$uri" "$PWD/mp"
	head -c $((16 * MiB)) /dev/urandom >expected
	dd if=expected of=mp bs=1M conv=notrunc status=none || fail "write the whole export"
	head -c 300001 /dev/urandom >data
	put mp 4097 data; put expected 4097 data
	put mp 100 data; put expected 100 data
	cmp mp expected || fail "read back after unaligned writes"
	cmp <(range mp 12345 777777) <(range expected 12345 777777) || fail "an unaligned read"
	xio "$PWD/mp" "fzero 1000 10000" "fpunch 70000 5000"
	head -c 10000 /dev/zero >z; put expected 1000 z
	head -c 5000 /dev/zero >z; put expected 70000 z
	cmp mp expected || fail "after unaligned zero and punch"
	fio --name=verify --filename="$PWD/mp" --rw=randwrite --bs=512 --size=4M \
		--offset_increment=4M --numjobs=4 --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --group_reporting --minimal --ioengine=psync \
		--number_ios=2000 >fio.out 2>&1 || fail "fio bs=512 verify: $(cat fio.out)"
	fx_down "$PWD/mp"
	grep -i "error" "$TESTDIR/nbd.err" && fail "the server refused requests: $(cat "$TESTDIR/nbd.err")"
	return 0
}

# fua_check MOUNTPOINT LOG OFFSET DSYNC: pwrite 4 KiB at OFFSET through a
# file opened O_DSYNC (DSYNC=1) or not, and print nbdkit's log lines (log
# filter) that the write made, before the file is closed (a close flushes)
fua_check() {
	"$PY" - "$@" <<'PYEOF'
import os, sys
mp, log, off, dsync = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
fd = os.open(mp, os.O_WRONLY | (os.O_DSYNC if dsync else 0))
seen = len(open(log).readlines())
if os.pwrite(fd, os.urandom(4096), off) != 4096: sys.exit("a short pwrite")
sys.stdout.write("".join(open(log).readlines()[seen:]))
os.close(fd)
PYEOF
}

# O_DSYNC writes reach the server as NBD_CMD_WRITE with FUA (nbdkit's log
# filter says fua=1), plain ones without, in every cache mode (writeback:
# O_DIRECT ones; a buffered write is written back without the opener's
# flags, and the FSYNC after it flushes); a server that offers no FUA gets
# a FLUSH right after the write, before the writer closes
t_nbd_fua() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" cache off=0 hex
	mkimg src 16; : >mp
	nbdk --filter=log file "$PWD/src" logfile="$PWD/nbd.log"
	for cache in none read writeback; do
		fx_up -q 2 -w --cache=$cache "$uri" "$PWD/mp"
		off=$((off + MiB)); hex=$(printf '%#x' $off)
		dd if=/dev/urandom of=mp bs=4k count=1 oflag=seek_bytes,dsync$([ $cache = writeback ] && echo ,direct) \
			seek=$off conv=notrunc status=none || fail "dd oflag=dsync, --cache=$cache"
		grep -q "Write id=[0-9]* offset=$hex count=0x1000 fua=1 " nbd.log ||
			fail "--cache=$cache: an O_DSYNC write was sent without FUA: $(grep "offset=$hex " nbd.log)"
		off=$((off + MiB)); hex=$(printf '%#x' $off)
		dd if=/dev/urandom of=mp bs=4k count=1 oflag=seek_bytes seek=$off conv=notrunc status=none ||
			fail "dd, --cache=$cache"
		fx_down "$PWD/mp"
		grep -q "Write id=[0-9]* offset=$hex count=0x1000 fua=0 " nbd.log ||
			fail "--cache=$cache: a plain write not seen as one: $(grep "offset=$hex " nbd.log)"
	done
	fx_up -q 2 -w --cache=none "$uri" "$PWD/mp"
	fua_check mp nbd.log $((10 * MiB)) 0 >plain.log || fail "the plain pwrite"
	grep -q "Write .* fua=0 " plain.log || fail "a plain pwrite: $(cat plain.log)"
	refute "a plain pwrite was flushed: $(cat plain.log)" grep -q Flush plain.log
	fx_down "$PWD/mp"
	kill "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	# the fua filter's default mode offers no FUA (1.32 refuses fuamode=none)
	nbdk --filter=log --filter=fua file "$PWD/src" logfile="$PWD/nbd.log"
	fx_up -q 2 -w --cache=none "$uri" "$PWD/mp"
	fua_check mp nbd.log $((11 * MiB)) 1 >dsync.log || fail "the O_DSYNC pwrite"
	grep -A 10 "Write .* fua=0 " dsync.log | grep -q "Flush id" ||
		fail "no FLUSH after an O_DSYNC write to a server without FUA: $(cat dsync.log)"
	fx_down "$PWD/mp"
}

# the server's preferred block size is st_blksize (the kernel asks again
# only for a stat that wants more than %o: %s), within 512 bytes to 1 MiB;
# a file source says 4096
t_nbd_blksize() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" p
	: >mp
	for p in 64K:65536 512:512 4M:$MiB; do
		nbdk --filter=blocksize-policy memory size=16M blocksize-preferred=${p%:*}
		fx_up $1 -w "$uri" "$PWD/mp"
		eq "$(stat -c '%s %o' mp)" "$((16 * MiB)) ${p#*:}" "size and st_blksize, preferred ${p%:*}"
		fx_down "$PWD/mp"
		kill "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	done
	truncate -s 16M src
	fx_up $1 -w "$PWD/src" "$PWD/mp"
	eq "$(stat -c '%s %o' mp)" "$((16 * MiB)) 4096" "size and st_blksize of a file source"
	fx_down "$PWD/mp"
}

# nbd-server, the reference server, on a unix socket
t_nbd_server() {
	mkimg src 32; cp src expected; : >mp
	cat >nbd.conf <<-EOF2
		[generic]
		unixsock = $PWD/nbd.sock
		[disk]
		exportname = $PWD/src
	EOF2
	rm -f nbd.sock
	# it forks into the background, and a child per connection
	nbd-server -C "$PWD/nbd.conf" 2>>"$TESTDIR/nbd.err" || fail "nbd-server: $(cat "$TESTDIR/nbd.err")"
	wait_socket "$PWD/nbd.sock"
	fx_up $1 -w "nbd+unix:///disk?socket=$PWD/nbd.sock" "$PWD/mp"
	cmp src mp || fail "cmp"
	head -c 300000 /dev/urandom >data
	put mp 4097 data; put expected 4097 data
	cmp mp expected || fail "read back"
	fx_down "$PWD/mp"
	cmp src expected || fail "the image"
}

# a window on an NBD export: nothing outside it changes
t_nbd_window() {
	mkimg src 32; cp src orig; : >mp
	qnbd src
	fx_up $1 -w --offset=3M --size=5M "nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	eq "$(stat -c %s mp)" $((5 * MiB)) "size"
	cmp mp <(range src $((3 * MiB)) $((5 * MiB))) || fail "window content"
	head -c $((5 * MiB)) /dev/urandom >data
	dd if=data of=mp bs=1M conv=notrunc status=none || fail "write the window"
	fx_down "$PWD/mp"
	cmp <(range src 0 $((3 * MiB))) <(range orig 0 $((3 * MiB))) || fail "before the window"
	cmp <(range src $((8 * MiB)) $((24 * MiB))) <(range orig $((8 * MiB)) $((24 * MiB))) || fail "after the window"
	cmp <(range src $((3 * MiB)) $((5 * MiB))) data || fail "the window"
}

# fault rules over an NBD source: the rule's range fails, the rest reads and
# writes through to the server
t_nbd_faults() {
	mkimg src 8; : >mp
	qnbd src
	fx_up $1 -w --fault=op=read,offset=1M,length=4K,error=EIO \
		--fault=op=write,offset=2M,length=1,error=ENOSPC \
		"nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	refute "a read of the faulty range succeeded" dd if=mp of=/dev/null bs=4k skip=256 count=1 iflag=direct status=none 2>err
	grep -q "Input/output error" err || fail "the faulty read: $(cat err)"
	cmp -n $MiB src mp || fail "reads before the faulty range"
	refute "a write over the rule's range succeeded" dd if=/dev/zero of=mp bs=4k seek=512 count=1 oflag=direct conv=notrunc status=none 2>err
	grep -q "No space left" err || fail "the faulty write: $(cat err)"
	head -c 4096 /dev/urandom >blk
	dd if=blk of=mp bs=4k seek=1000 conv=notrunc oflag=direct status=none || fail "a write beside the rules"
	fx_down "$PWD/mp"
	cmp blk <(range src $((1000 * 4096)) 4096) || fail "the write beside the rules did not reach the server"
}

# a partition of an NBD export, and a snapshot over one: the server's
# image changes only by --commit
t_nbd_layers() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" before
	truncate -s 32M src; : >mp
	printf 'label: dos\nstart=2048, size=8192\nstart=10240, size=20480\n' | sfdisk -q src ||
		fail "sfdisk"
	head -c $((10 * MiB)) /dev/urandom >p2; put src $((10240 * 512)) p2
	qnbd src
	"$FX" --partitions "$uri" >parts || fail "--partitions over NBD: $(cat parts)"
	grep -q ' 2 ' parts || fail "--partitions: $(cat parts)"
	fx_up $1 --partition=2 "$uri" "$PWD/mp"
	eq "$(stat -c %s mp)" $((20480 * 512)) "partition 2's size"
	cmp <(range mp 0 $((10 * MiB))) p2 || fail "partition 2's bytes"
	fx_down "$PWD/mp"
	before=$(sum src)
	fx_up $1 -w --snapshot="$PWD/snap" "$uri" "$PWD/mp"
	head -c $MiB /dev/urandom >data
	put mp $MiB data
	cmp <(range mp $MiB $MiB) data || fail "the snapshot's write"
	fx_down "$PWD/mp"
	eq "$(sum src)" "$before" "the image under a snapshot"
	"$FX" --commit --snapshot="$PWD/snap" "$uri" || fail "--commit over NBD"
	cmp <(range src $MiB $MiB) data || fail "the image after --commit"
}

# a hostile server: a handshake as it should be, then replies that lie
# (data outside the request, then a cookie never sent): the reads get EIO,
# the export goes on and ends cleanly
t_nbd_hostile() {
	if writeback "$1"; then	# it reads the last byte before it is live
		skip_test "with --cache=writeback the first lie halts the export at start"
	fi
	: >mp
	"$PY" - "$PWD/nbd.sock" <<-'PY' 2>"$TESTDIR/nbd.err" &
		import socket, struct, sys
		s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
		def full(c, n):
		    b = b""
		    while len(b) < n:
		        d = c.recv(n - len(b))
		        if not d: raise EOFError
		        b += d
		    return b
		def rep(c, opt, typ, data=b""):
		    c.sendall(struct.pack(">QIII", 0x3e889045565a9, opt, typ, len(data)) + data)
		lies = 0
		while True:
		    c, _ = s.accept()
		    try:
		        c.sendall(b"NBDMAGICIHAVEOPT" + struct.pack(">H", 3)); full(c, 4)
		        while True:
		            _, opt, n = struct.unpack(">QII", full(c, 16)); full(c, n)
		            if opt == 7:
		                rep(c, 7, 3, struct.pack(">HQH", 0, 1 << 20, 1 | 2))
		                rep(c, 7, 1); break
		            rep(c, opt, 1)
		        while True:
		            _, _, typ, cookie, off, n = struct.unpack(">IHHQQI", full(c, 28))
		            lies += 1
		            if lies % 2:	# data past the request: that read gets EIO
		                c.sendall(struct.pack(">IHHQI", 0x668e33ef, 1, 1, cookie, 8 + n) +
		                          struct.pack(">Q", off + 1) + bytes(n))
		            else:		# a cookie never sent: the connection goes
		                c.sendall(struct.pack(">IIQ", 0x67446698, 0, cookie + 7))
		    except (EOFError, OSError):
		        c.close()
	PY
	NBDPID=$!
	wait_socket "$PWD/nbd.sock"
	fx_up $1 --retry=2 "nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	eq "$(stat -c %s mp)" $MiB "size"
	timeout 60 dd if=mp of=/dev/null bs=4k count=1 iflag=direct status=none 2>err &&
		fail "a read of lies succeeded"
	grep -q "Input/output error" err || fail "the read failed with: $(cat err)"
	timeout 60 dd if=mp of=/dev/null bs=4k skip=5 count=1 iflag=direct status=none 2>err &&
		fail "a second read of lies succeeded"
	grep -q "Input/output error" err || fail "the second read failed with: $(cat err)"
	[ -d "/proc/$FXPID" ] || fail "the server died"
	fx_down "$PWD/mp"
	kill "$NBDPID" 2>/dev/null || :
}

# The NBD stress tests: many client threads (nbdstress.py) mixing reads,
# writes, fsyncs, punches and zeroed ranges of 1 byte to 4 MiB, with and
# without O_DIRECT, on an export of a server that is slow, serial, awkward
# or restarted. Every read is checked against the clients' model, and the
# server's image against it at the end; an operation stuck for
# FX_STRESS_HANG seconds (default 30) ends the test with the export
# server's threads shown by gdb. FX_STRESS_SECONDS (default 8) is the
# length of each run, FX_STRESS_THREADS (default 12) their clients: a
# longer run by hand raises them (and FX_TIMEOUT).

# stress_run INIT [NBDSTRESS OPTIONS...]: the clients on ./mp (FXPID's
# export), starting from the image INIT (or zeros); their model goes to
# ./model. Fails on a wrong byte, an error not allowed, or a hang (the
# whole report of which stays in ./stress.out: FX_KEEP=1 keeps it).
stress_run() {
	local init=$1; shift
	"$PY" "$TOP/tests/nbdstress.py" "$PWD/mp" "$init" --pid "$FXPID" \
		--threads "${FX_STRESS_THREADS:-12}" --seconds "${FX_STRESS_SECONDS:-8}" \
		--hang "${FX_STRESS_HANG:-30}" --model "$PWD/model" "$@" >stress.out 2>&1 || {
		grep -q '^HANG' stress.out &&
			fail "$(grep '^HANG' stress.out); the server's threads: $(sed -n '/in short:/,$p' stress.out)"
		fail "nbdstress $*: $(grep -m 5 '^FAIL' stress.out || tail -n 5 stress.out)"
	}
	log "$(grep '^nbdstress' stress.out | tr '\n' ' ')"
}

# stress_image IMAGE: the server's image is what the clients' model says
stress_image() {
	cmp "$1" model >cmp.out 2>&1 || fail "the server's image differs from the model: $(cat cmp.out)"
}

# a server that answers one request at a time (nbdkit noparallel): with
# more requests in flight than it takes, the replies wait in the socket
# while the clients keep sending (first only reads and writes of 512 KiB
# to 4 MiB, which fill the socket both ways: hung within seconds on 728e558)
t_nbd_stress_serial() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" mode
	: >mp
	# export options|nbdstress options
	for mode in "-q 8 --cache=none|--bulk" "-q 24 --cache=writeback|" "-q 1 --cache=none|"; do
		nbdk --filter=noparallel memory 64M serialize=requests
		fx_up -w ${mode%|*} "$uri" "$PWD/mp"
		stress_run zeros ${mode#*|}
		fx_down "$PWD/mp"
		nbdcopy "$uri" image || fail "nbdcopy of the image"
		stress_image image
		kill "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	done
}

# odd_server IMAGE OPTIONS...: tests/nbdserver.py serving IMAGE on
# ./nbd.sock, told what to do on ./ctl; NBDPID
odd_server() {
	local img=$PWD/$1 i; shift
	rm -f nbd.sock; [ -p ctl ] || mkfifo ctl
	"$PY" "$TOP/tests/nbdserver.py" "$PWD/nbd.sock" "$img" --control "$PWD/ctl" "$@" \
		2>"$TESTDIR/nbd.err" &
	NBDPID=$!
	for i in $(seq 300); do [ -S nbd.sock ] && break; sleep 0.1; done	# python may start slowly
	wait_socket "$PWD/nbd.sock"
}

# odd_stop: end the server; fail if the client sent anything the protocol
# forbids it (the server's "VIOLATION" lines); its counts go to ./counts
odd_stop() {
	kill "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	grep '^nbdserver:' "$TESTDIR/nbd.err" >counts || fail "no counts from the server: $(cat "$TESTDIR/nbd.err")"
	log "$(cat counts)"
	! grep -q VIOLATION "$TESTDIR/nbd.err" || fail "the client broke the protocol: $(grep -m 5 VIOLATION "$TESTDIR/nbd.err")"
}

# odd_commands SECONDS LINE...: a LINE to the server's ./ctl every second
# (taking turns) for SECONDS
odd_commands() {
	local n=$1 i=0; shift
	local lines=("$@")
	while [ $i -lt "$n" ] && [ -d "/proc/$NBDPID" ]; do
		sleep 1
		timeout 5 sh -c 'echo "$1" >ctl' _ "${lines[$((i % ${#lines[@]}))]}" || :
		i=$((i + 1))
	done
}

# An awkward server (tests/nbdserver.py): replies out of order, reads split
# into many chunks (FX_STRESS_SPLIT, default 64, in random order), chunks
# of several replies interleaved. It checks that every request the client
# sends is one it may send.

# odd_run FX_OPTIONS SERVER_OPTIONS NBDSTRESS_OPTIONS COMMAND...: the clients
# on an export of ./src from tests/nbdserver.py, told COMMANDs in turn
# once a second; then the image must be the model
odd_run() {
	local fxo=$1 so=$2 cso=$3 secs=${FX_STRESS_SECONDS:-8} flush=; shift 3
	# a connection cut while it held writes not yet flushed: from then on
	# flushes fail (the export cannot tell that this server lost nothing)
	case " $* " in *" close "*) flush=--flush-errors ;; esac
	cp src init
	odd_server src --split "${FX_STRESS_SPLIT:-64}" $so
	fx_up -w $fxo --cache=none --retry=30 "nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	odd_commands "$((secs - 1))" "$@" &
	stress_run init --threads 8 $cso $flush
	wait $!
	if [ -n "$flush" ]; then
		umount mp || fail "umount"
		wait_gone "$FXPID" 10 || fail "server still running 10s after umount"
	else
		fx_down "$PWD/mp"
	fi
	odd_stop
	stress_image src
}

# on command a reply stalls mid-chunk or is cut off with its connection:
# the client sends again, no caller sees an error; SEEK_DATA through
# BLOCK_STATUS; neighbouring clients share blocks. Then reads split into
# up to 300 chunks each (EIO on 728e558: over 32 stretches pending)
t_nbd_stress_chunks() {
	mkimg src 32; : >mp
	odd_run "-q 2" "--seed 1" "--seek --shared-blocks" "stall 1" close
	grep -q ' [1-9][0-9]* stalls' counts && grep -q ' [1-9][0-9]* closes' counts ||
		fail "the server did not stall and cut replies: $(cat counts)"
	# a MiB in up to 300 chunks in random order: every byte comes, no EIO
	odd_server src --split 300 --seed 4
	fx_up -q 2 --cache=none "nbd+unix:///?socket=$PWD/nbd.sock" "$PWD/mp"
	dd if=mp of=copy bs=1M count=4 iflag=direct status=none 2>err ||
		fail "reads in many chunks: $(cat err)"
	cmp copy <(range src 0 $((4 * MiB))) || fail "reads in many chunks: wrong bytes"
	fx_down "$PWD/mp"
	odd_stop
}

# 4 KiB blocks: ragged writes read-modify-written while neighbours write
# the same blocks; several connections, cut now and then
t_nbd_stress_blocks() {
	mkimg src 32; : >mp
	odd_run "-q 8" "--seed 2 --min-block 4096 --multi-conn" "--shared-blocks" close
}

# simple replies only; requests failed on command: each failure reaches
# its caller (EIO), nothing else changes
t_nbd_stress_errors() {
	mkimg src 32; : >mp
	odd_run "-q 1" "--seed 3 --no-structured" "--errors" "error 2"
	grep -q ' [1-9][0-9]* errors,' counts || fail "no error injected: $(cat counts)"
	grep -q ' [1-9][0-9]* errors taken' stress.out || fail "no error reached a client: $(cat counts)"
}

# qemu-nbd killed (SIGKILL) and started again twice under the clients:
# every request in flight is sent again, nothing is lost, no read, write,
# punch or zeroing fails; fsyncs may after the first loss (where writes
# not yet flushed were in flight), and then the server's exit status is 1
t_nbd_stress_restart() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" secs=${FX_STRESS_SECONDS:-8} pid
	mkimg src 64; : >mp
	cp src init
	qnbd src
	fx_up -w -q 24 --cache=none --retry=30 "$uri" "$PWD/mp"
	stress_run init --seconds $((secs + 4)) --flush-errors &
	pid=$!
	sleep 2
	kill -KILL "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	sleep 1
	qnbd src
	sleep 2
	kill -KILL "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
	qnbd src
	wait "$pid" || exit 1
	umount mp || fail "umount"
	wait_gone "$FXPID" 10 || fail "server still running 10s after umount"
	wait "$FXPID" || :	# 1 where writes were unflushed at a kill
	stress_image src
}

# nbdkit's delay filter: every request takes milliseconds, so many wait
# in flight at once on every connection
t_nbd_stress_delay() {
	local uri="nbd+unix:///?socket=$PWD/nbd.sock" mode
	mkimg src 64; : >mp
	for mode in "-q 2 --cache=read" "-q 24 --cache=none"; do
		cp src init
		nbdk --filter=delay file "$PWD/src" rdelay=3ms wdelay=5ms delay-extents=2ms
		fx_up -w $mode "$uri" "$PWD/mp"
		stress_run init
		fx_down "$PWD/mp"
		kill "$NBDPID"; wait "$NBDPID" 2>/dev/null || :
		stress_image src
	done
}

# bad URIs and servers: one line each, nothing mounted
t_nbd_bad() {
	bad_setup
	local s=$PWD/nbd.sock
	for u in "nbd://" "nbd://:10809" "nbd://host:0" "nbd://host:99999" "nbd://host:1x" \
		"nbd://[::1" "nbd://user@127.0.0.1" "nbd+unix:///x" "nbd+unix://host/?socket=$s" \
		"nbd+unix:///?socket=" "nbd://127.0.0.1/?socket=$s" "nbd://127.0.0.1/%zz" \
		"nbd+unix:///?socket=$s&foo=1" "nbds://127.0.0.1" "nbds+unix:///?socket=$s" \
		"nbd://127.0.0.1/#frag" "nbd+unix:///?socket=$s"; do
		bad "$u" "$PWD/mp"
	done
	port=$(free_port)
	bad "nbd://127.0.0.1:$port" "$PWD/mp"
	grep -q "refused" err || fail "no server: $(cat err)"
	# control bytes 0x10-0x19 are no hex digits (they were taken as 0-9)
	bad "nbd://127.0.0.1:$port/a%"$'\x11\x31' "$PWD/mp"
	grep -q "a bad %-escape" err || fail "%<0x11><0x31> taken as an escape: $(cat err)"
	# not an NBD server at all
	"$PY" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
c, _ = s.accept(); c.sendall(b"HTTP/1.0 400 Bad\r\n\r\n" * 4); c.recv(100)' "$s" &
	wait_socket "$s"
	bad "nbd+unix:///?socket=$s" "$PWD/mp"
	grep -q "not an NBD server" err || fail "not NBD: $(cat err)"
	# a greeting dripped past the 10 s: the server talks, too slowly;
	# it was told "no greeting (is it serving another client?)". Beside
	# the next case, so that the two take their 10 s together
	"$PY" -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
c, _ = s.accept()
try:
    for b in b"NBDMAGICIHAVEOPT\0\3": c.sendall(bytes([b])); time.sleep(0.8)
except OSError: pass' "$PWD/drip.sock" &
	wait_socket "$PWD/drip.sock"
	"$FX" "nbd+unix:///?socket=$PWD/drip.sock" "$PWD/mp" 2>drip.err &
	local drip=$!
	# the handshake has 10 s in all: a greeting dripped a byte at a time
	# (9 s, no read waits long), then base:allocation named without end
	# (each read had 10 s of its own, and the replies held the setup for
	# ever)
	rm -f "$s"
	"$PY" -c 'import socket, struct, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
c, _ = s.accept()
for b in b"NBDMAGICIHAVEOPT\0\3": c.sendall(bytes([b])); time.sleep(0.5)
def full(n):
    b = b""
    while len(b) < n: b += c.recv(n - len(b)) or sys.exit(0)
    return b
full(4)
try:
    while True:
        _, opt, n = struct.unpack(">QII", full(16)); full(n)
        while opt == 10:
            c.sendall(struct.pack(">QIIII", 0x3e889045565a9, 10, 4, 19, 1) + b"base:allocation")
            time.sleep(0.01)
        c.sendall(struct.pack(">QIII", 0x3e889045565a9, opt, 1, 0))
except OSError: pass' "$s" &
	wait_socket "$s"
	bad "nbd+unix:///?socket=$s" "$PWD/mp"
	grep -q "handshake: not done in 10 s" err || fail "a handshake without end: $(cat err)"
	wait "$drip" && fail "a greeting dripped past 10 s: exit 0"
	grep -q "handshake: not done in 10 s" drip.err || fail "a greeting dripped past 10 s: $(cat drip.err)"
	rm -f "$s"
	# a refusal whose words carry a terminal escape and a new line: one
	# line, no control byte
	"$PY" -c 'import socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
c, _ = s.accept(); c.sendall(b"NBDMAGICIHAVEOPT\0\3"); c.recv(4)
try:
    while True:
        _, opt, n = struct.unpack(">QII", c.recv(16)); c.recv(n) if n else b""
        why = b"gone\x1b[2J\nfuseexport: all is well" if opt == 7 else b""
        c.sendall(struct.pack(">QIII", 0x3e889045565a9, opt, (1 << 31) | (3 if why else 1), len(why)) + why)
except (OSError, struct.error): pass' "$s" &
	wait_socket "$s"
	bad "nbd+unix:///?socket=$s" "$PWD/mp"
	grep -q "refused export '': gone?\[2J?fuseexport: all is well" err || fail "the refusal: $(cat -A err)"
	rm -f "$s"
	qnbd src
	bad -g "nbd+unix:///?socket=$s" "$PWD/mp"
	bad --offset=5M "nbd+unix:///?socket=$s" "$PWD/mp"
}

# ---------------------------------------------------------------------------
# Bad input: one line `fuseexport: <what>: <why>`, non-zero exit, nothing
# mounted, the source unchanged. bad ARGS... runs against ./src and ./mp as
# prepared by bad_setup (or the caller).

# ---------------------------------------------------------------------------
# The page-cache modes (--cache=read, writeback): what they promise beyond
# the behaviour tests, which run in every mode

# resident FILE: the bytes of FILE in the page cache (fincore)
resident() { fincore -b -n -o RES "$1" | tr -d ' '; }

# Reading 64 MiB through a --cache=read export leaves the kernel's copy in
# the export's page cache and none in the source's: the server reads the
# source with O_DIRECT and sends nothing from its mapping (with
# --cache=none, the other way round)
t_cache_once() {
	local mb=64 size=$((64 * MiB))
	[ "$(stat -f -c %T .)" != tmpfs ] || skip_test "the test directory is on tmpfs, which is memory itself"
	dd if=/dev/urandom of=src bs=1M count="$mb" conv=fsync status=none
	: >mp
	fx_up --cache=read "$PWD/src" "$PWD/mp"
	echo 1 >/proc/sys/vm/drop_caches
	dd if=mp of=/dev/null bs=1M status=none
	log "read: export $(resident mp), source $(resident src) bytes cached"
	[ "$(resident mp)" -ge $((size * 3 / 4)) ] || fail "the export's pages are not cached"
	[ "$(resident src)" -le $((size / 8)) ] || fail "the source keeps a second copy: $(resident src) bytes"
	# small random reads: the source reads around them, but what was
	# read through the export is dropped from the source's cache
	echo 1 >/proc/sys/vm/drop_caches
	"$PY" - mp <<-'EOF' || fail "random reads through the export"
	import os, random, sys
	fd = os.open(sys.argv[1], os.O_RDONLY)
	blocks = os.fstat(fd).st_size // 4096
	for b in random.Random(7).sample(range(blocks), blocks // 4):
	    assert len(os.pread(fd, 4096, b * 4096)) == 4096
	EOF
	log "random reads: export $(resident mp), source $(resident src) bytes cached"
	[ "$(resident mp)" -ge $((size / 4)) ] || fail "the export's pages are not cached"
	[ $(($(resident mp) + $(resident src))) -le $((size + size / 16)) ] ||
		fail "pages cached twice: export $(resident mp), source $(resident src) bytes"
	fx_down "$PWD/mp"
	fx_up --cache=none "$PWD/src" "$PWD/mp"
	echo 1 >/proc/sys/vm/drop_caches
	dd if=mp of=/dev/null bs=1M status=none
	log "none: source $(resident src) bytes cached"
	[ "$(resident src)" -ge $((size * 3 / 4)) ] || fail "--cache=none: the source's page cache is not used"
	fx_down "$PWD/mp"
}

# The default is coherent at open, as NFS's close-to-open: a source changed
# behind the export's back, a loop device written directly or a file under
# a window, is read anew by the next open. A file that proves itself
# unchanged keeps its pages across opens (fincore), and a store through
# another process's mapping to a page it had dirtied before still counts
# as a change (it sets no time of its own).
t_cache_coherent() {
	local loop mode what i new=$((3 * 65536))
	mkimg img 16; mkimg src 16; : >mp
	loop=$(losetup -f --show img) || fail "losetup"
	track_loop "$loop"
	for mode in "" --cache=read; do
		what="${mode:---cache=auto}"
		fx_up $mode "$loop" "$PWD/mp"
		cmp mp "$loop" || fail "$what: the loop device through the export"
		head -c 65536 /dev/urandom >new
		dd if=new of="$loop" bs=64k seek=3 oflag=direct conv=notrunc status=none ||
			fail "dd into the loop device"
		cmp <(range mp $new 65536) new || fail "$what: a new open of a loop device's export read stale bytes"
		fx_down "$PWD/mp"

		fx_up $mode --offset=1M --size=8M "$PWD/src" "$PWD/mp"
		cmp mp <(range src $MiB $((8 * MiB))) || fail "$what: the window through the export"
		head -c 65536 /dev/urandom >new
		put src $((MiB + new)) new
		cmp <(range mp $new 65536) new || fail "$what: a new open of a window of a file read stale bytes"
		cmp mp <(range src $MiB $((8 * MiB))) || fail "$what: the window after the change"
		# the first open after the change may come within the clock's
		# tick of it, which proves nothing: the next one does (a file
		# on tmpfs never does: t_cache_coherent_tmpfs)
		for i in 1 2 3; do
			cat mp >/dev/null
			[ "$(resident mp)" -ge $((7 * MiB)) ] && break
		done
		[ "$(resident mp)" -ge $((7 * MiB)) ] || [ "$(stat -f -c %T .)" = tmpfs ] ||
			fail "$what: a file unchanged since the last open did not keep its pages: $(resident mp) bytes"
		PYTHONPATH="$TOP/tests" "$PY" - src mp $MiB <<-'EOF' || fail "$what: a store through a mapping"
		import mmap, os, sys, time
		src, mp, off = sys.argv[1], sys.argv[2], int(sys.argv[3])
		fd = os.open(src, os.O_RDWR)
		m = mmap.mmap(fd, 0)
		m[off:off + 4] = b"AAAA"         # the page dirty, the times set
		time.sleep(0.1)                  # the times older than the clock's tick
		assert open(mp, "rb").read(4) == b"AAAA", "the first store is not seen"
		m[off:off + 4] = b"BBBB"         # the page dirty already: no time set
		got = open(mp, "rb").read(4)
		assert got == b"BBBB", "a new open read %r, not the second store" % got
		EOF
		fx_down "$PWD/mp"
	done
	# a writer's open takes direct I/O: its writes drop what a reader
	# still open (and its mapping) had cached, and it reads them back
	fx_up -w --offset=1M --size=8M "$PWD/src" "$PWD/mp"
	"$PY" - mp <<-'EOF' || fail "a reader still open after a writer wrote"
	import mmap, os, sys
	r = os.open(sys.argv[1], os.O_RDONLY)
	os.pread(r, 1 << 20, 0)
	m = mmap.mmap(r, 1 << 20, prot=mmap.PROT_READ)
	w = os.open(sys.argv[1], os.O_RDWR)
	os.pwrite(w, b"Q" * 5000, 3000)
	assert os.pread(r, 5000, 3000) == b"Q" * 5000, "the reader read stale bytes"
	assert m[3000:8000] == b"Q" * 5000, "the reader's mapping holds stale bytes"
	assert os.pread(w, 5000, 3000) == b"Q" * 5000, "the writer does not read its write"
	EOF
	fx_down "$PWD/mp"
}

# Opens at the same time after a change behind the export: the kernel drops
# its pages in the opener once it has the reply, so an open whose reply came
# later but which finished first kept pages the drop had yet to go through
# (stale in about a third of the rounds, -q 1 or 2); every open must read
# the source's bytes of now
t_cache_coherent_opens() {
	local q
	mkimg src 4; : >mp
	for q in 1 2; do
		fx_up -q $q --passthrough=off "$PWD/src" "$PWD/mp"
		"$PY" - src mp <<-'EOF' || fail "-q $q: opens at the same time after a change"
		import os, sys, threading, time
		for n in range(60):
		    # a warm cache, kept by an open that proves the file unchanged
		    for _ in range(2):
		        time.sleep(0.012)      # the times older than the clock's tick
		        with open(sys.argv[2], "rb") as f:
		            f.read(65536)
		    tag = b"%08d" % n
		    fd = os.open(sys.argv[1], os.O_WRONLY)
		    os.pwrite(fd, tag * 512, 0)
		    os.close(fd)                   # no writer left: proof possible
		    time.sleep(0.012)
		    start, got = threading.Barrier(4), []
		    def reader():
		        start.wait()
		        with open(sys.argv[2], "rb", buffering=0) as f:
		            got.append(f.read(8))
		    ts = [threading.Thread(target=reader) for _ in range(4)]
		    [t.start() for t in ts]
		    [t.join() for t in ts]
		    assert got == [tag] * 4, "round %d: read %r, the source holds %r" % (n, got, tag)
		EOF
		fx_down "$PWD/mp"
	done
}

# A write sets the times as it starts: an open while it is under way (its
# buffer here a mapping of a second export whose last page takes 1 s to
# read) sees settled times and caches the old last page; once the write is
# done and its file closed, a new open must read the new one (on main the
# times were as before, and the export kept the old page)
t_cache_coherent_inflight() {
	mkimg src 4; : >mp
	head -c $((4 * MiB)) /dev/urandom >new; : >slow
	fx_up -q 2 --passthrough=off "$PWD/src" "$PWD/mp"
	fx_up --cache=none --fault=op=read,offset=$((4 * MiB - 4096)),length=4096,delay=1s,error=none \
		"$PWD/new" "$PWD/slow"
	"$PY" - src mp slow <<-'EOF' || fail "a write under way at an open"
	import mmap, os, sys, threading, time
	src, mp, slow = sys.argv[1:]
	end = (4 << 20) - 4096
	def last_page():
	    with open(mp, "rb", buffering=0) as f:
	        return os.pread(f.fileno(), 4096, end)
	for _ in range(2):                # a warm cache, kept
	    time.sleep(0.012)
	    old = last_page()
	buf = mmap.mmap(os.open(slow, os.O_RDONLY), 0, prot=mmap.PROT_READ)
	def write():
	    fd = os.open(src, os.O_WRONLY)
	    os.pwrite(fd, buf, 0)
	    os.close(fd)
	w = threading.Thread(target=write)
	w.start()
	time.sleep(0.3)                   # under way, its times settled
	assert w.is_alive(), "the write is done already"
	last_page()
	w.join()
	time.sleep(0.012)
	got, want = last_page(), open(src, "rb").read()[end:]
	assert got == want, "a new open after the write read %s bytes" % ("the old" if got == old else "other")
	EOF
	fx_down "$PWD/slow"
	fx_down "$PWD/mp"
}

# tmpfs writes nothing back: a store through another program's mapping to
# a page it stored to before sets no time, so a file there proves nothing
# and every open reads it anew
t_cache_coherent_tmpfs() {
	mkdir shm
	mount -t tmpfs -o size=16m tmpfs shm
	mkimg shm/src 4; : >mp
	fx_up --passthrough=off "$PWD/shm/src" "$PWD/mp"
	"$PY" - shm/src mp <<-'EOF' || fail "a store through a mapping of a file on tmpfs"
	import mmap, os, sys, time
	m = mmap.mmap(os.open(sys.argv[1], os.O_RDWR), 0)
	m[0:4] = b"AAAA"                  # the page written, the times set
	time.sleep(0.1)                   # the times older than the clock's tick
	for _ in range(2):
	    assert open(sys.argv[2], "rb").read(4) == b"AAAA", "the first store is not seen"
	m[0:4] = b"BBBB"                  # no time set
	got = open(sys.argv[2], "rb").read(4)
	assert got == b"BBBB", "a new open read %r, not the second store" % got
	EOF
	fx_down "$PWD/mp"
	umount shm
}

# As root a writeback export's bdi is no longer held to FUSE's strict 1%
# of the dirty limit; a read cache dirties nothing and keeps the kernel's
t_writeback_dirty_limit() {
	local mode bdi
	mkimg src 4; : >mp
	for mode in writeback read; do
		fx_fg -d -w --cache=$mode "$PWD/src" "$PWD/mp"
		bdi=/sys/class/bdi/$(mountpoint -d mp) || fail "no device for the export"
		[ -e "$bdi/max_ratio" ] || skip_test "no $bdi/max_ratio"
		if [ $mode = writeback ]; then
			eq "$(cat "$bdi/max_ratio")" 100 "max_ratio with a writeback cache"
			[ ! -e "$bdi/strict_limit" ] ||
				eq "$(cat "$bdi/strict_limit")" 0 "strict_limit with a writeback cache"
			grep -q "dirty page limit for FUSE lifted" fg.err || fail "-d does not say so: $(cat fg.err)"
		else
			eq "$(cat "$bdi/max_ratio")" 1 "max_ratio with a read cache"
		fi
		fx_down "$PWD/mp"
	done
}

# A write past the end of a fixed-size export with a writeback cache: the
# kernel owns the size, so the error comes when the data is written back
# (fsync: ENOSPC), and nothing past the end reaches the source
t_writeback_past_end() {
	mkimg src 4; cp src expected; : >mp
	fx_up -w --cache=writeback "$PWD/src" "$PWD/mp"
	"$PY" - mp <<-'EOF' || fail "a write past the end was not refused at fsync"
	import errno, os, sys
	fd = os.open(sys.argv[1], os.O_RDWR)
	os.pwrite(fd, b"x" * 4096, os.fstat(fd).st_size)
	try:
	    os.fsync(fd)
	except OSError as e:
	    sys.exit(0 if e.errno == errno.ENOSPC else 1)
	sys.exit(1)
	EOF
	fx_down "$PWD/mp"
	cmp src expected || fail "the source changed"
}

# Memory pressure: ext4 on a loop device over a writeback export, written
# well past a memory-limited cgroup's size by a writer inside it, with the
# server inside it too: it must finish (no deadlock between reclaim and the
# server) and e2fsck must find the file system clean
t_pressure() {
	local cg loop i
	if [ -d /sys/fs/cgroup/memory ] && [ ! -e /sys/fs/cgroup/cgroup.controllers ]; then
		cg=/sys/fs/cgroup/memory/fuseexport-test-$$
		mkdir "$cg" && echo "$cg" >>"$ROOT/.cgroups"
		echo $((96 * MiB)) >"$cg/memory.limit_in_bytes"
	elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
		cg=/sys/fs/cgroup/fuseexport-test-$$
		mkdir "$cg" && echo "$cg" >>"$ROOT/.cgroups"
		echo $((96 * MiB)) >"$cg/memory.max"
	else
		skip_test "needs the memory cgroup controller"
	fi
	truncate -s 1G img; : >mp; mkdir m
	fx_up -w --cache=writeback "$PWD/img" "$PWD/mp"
	echo "$FXPID" >"$cg/cgroup.procs"
	loop=$(losetup -f --show mp) || fail "losetup over the export"
	track_loop "$loop"
	mkfs.ext4 -q -F "$loop" || fail "mkfs.ext4"
	mount "$loop" m || fail "mount"
	track_mount "$PWD/m"
	timeout 300 sh -c 'echo $$ >"$1/cgroup.procs" &&
		dd if=/dev/urandom of="$2/big" bs=1M count=400 conv=fsync status=none' _ "$cg" m ||
		fail "writing 400 MiB under a 96 MiB cgroup: status $?"
	umount m
	losetup -d "$loop"
	for i in $(seq 100); do		# the loop device lets go of mp
		losetup -j "$PWD/mp" | grep -q . || break
		sleep 0.1
	done
	e2fsck -fn mp >e2fsck.log 2>&1 || fail "e2fsck: $(tail -n 3 e2fsck.log)"
	fx_down "$PWD/mp"
}

bad_setup() { mkimg src 4; : >mp; }

# bad [--as USER] ARGS...: ARGS may name $S (source) and $M (mount point)
bad() {
	local as=() rc before=
	if [ "$1" = --as ]; then as=(setpriv --reuid="$2" --regid="$2" --clear-groups); shift 2; fi
	[ -e src ] && [ ! -d src ] && [ -f src ] && before=$(sum src)
	rc=0; timeout 20 "${as[@]}" "$FX" "$@" >out 2>err || rc=$?
	if [ $rc -eq 0 ]; then
		for a in "$@"; do fuse_mounted "$a" && track_mount "$a" && track_pid "$(fx_pid "$a")"; done
		fail "fuseexport $* exited 0"
	fi
	[ $rc -ne 124 ] || fail "fuseexport $* hangs"
	log "exit $rc: $(cat err)"
	eq "$(wc -l <err)" 1 "stderr lines"
	grep -Eq '^fuseexport: .+: .+$' err || fail "message not 'fuseexport: <what>: <why>': $(cat err)"
	if [ -z "${BAD_MOUNTED_OK:-}" ]; then
		for a in "$@"; do
			if [ -e "$a" ] && mounted "$a"; then fail "$a is mounted"; fi
		done
		[ -z "$(fx_pid "$PWD/mp")" ] || fail "a server is left running"
	fi
	[ -n "$before" ] && eq "$(sum src)" "$before" "source checksum"
	return 0
}

b_no_args() { bad_setup; bad; }
b_one_arg() { bad_setup; bad "$PWD/src"; }
b_three_args() { bad_setup; : >mp2; bad "$PWD/src" "$PWD/mp" "$PWD/mp2"; mounted "$PWD/mp2" && fail "mp2 mounted"; return 0; }
b_missing_source() {
	bad_setup
	bad "$PWD/nosuch" "$PWD/mp"
	grep -q nosuch err || fail "message does not name the source"
	[ -e nosuch ] && fail "source created"; return 0
}
b_unreadable_source() {
	bad_setup; chmod 600 src; chmod 755 .; chmod 666 mp
	bad --as 65534 "$PWD/src" "$PWD/mp"
	grep -q "$PWD/src" err || fail "message does not name the source"
}
b_unwritable_source_user() {
	bad_setup; chmod 644 src; chmod 755 .; chmod 666 mp
	bad --as 65534 -w "$PWD/src" "$PWD/mp"
	grep -q "$PWD/src" err || fail "message does not name the source"
}
unwritable_ns() {
	mkdir ro; mount -t tmpfs -o size=8m tmpfs ro
	mkimg ro/img 4; mount -o remount,ro ro
	: >mp
	local before; before=$(sum ro/img)
	bad -w "$PWD/ro/img" "$PWD/mp"
	bad -g "$PWD/ro/img" "$PWD/mp"
	eq "$(sum ro/img)" "$before" "source"
	umount ro
}
b_unwritable_source_rofs() { in_ns unwritable_ns; }
b_unwritable_source_roloop() {
	local loop
	bad_setup
	loop=$(losetup -r -f --show src) || fail "losetup -r"
	track_loop "$loop"
	bad -w "$loop" "$PWD/mp"
	losetup -d "$loop"
}
b_dir_source() { bad_setup; mkdir d; bad "$PWD/d" "$PWD/mp"; }
b_fifo_source() { bad_setup; mkfifo f; bad "$PWD/f" "$PWD/mp"; }
b_chardev_source() { bad_setup; bad /dev/null "$PWD/mp"; bad -w /dev/zero "$PWD/mp"; }
b_symlink_dir_source() { bad_setup; mkdir d; ln -s d l; bad "$PWD/l" "$PWD/mp"; }
b_missing_mp() {
	bad_setup
	bad "$PWD/src" "$PWD/nosuch"
	[ -e nosuch ] && fail "mount point created"; return 0
}
b_dir_mp() { bad_setup; mkdir d; bad "$PWD/src" "$PWD/d"; }
b_fifo_mp() { bad_setup; mkfifo f; bad "$PWD/src" "$PWD/f"; }
b_chardev_mp() { bad_setup; mknod c c 1 3; bad "$PWD/src" "$PWD/c"; }
b_exported_mp() {
	bad_setup; mkimg src2 4
	fx_up "$PWD/src2" "$PWD/mp"
	BAD_MOUNTED_OK=1 bad "$PWD/src" "$PWD/mp"
	eq "$(findmnt -n --mountpoint "$PWD/mp" | wc -l)" 1 "mounts on the mount point"
	cmp mp src2 || fail "the first export"
	fx_down "$PWD/mp"
	# a relative mount point with a leading dash: the pasted hint is not
	# taken for umount's options (it said "umount -mp")
	: >./-mp
	fx_up "$PWD/src2" "$PWD/-mp"
	BAD_MOUNTED_OK=1 bad "$PWD/src" -- -mp
	how=$(sed -n 's/.*(end that export with: \(.*\))$/\1/p' err)
	[ -n "$how" ] && sh -c "$how" || fail "the hint's command: '$how'"
	wait_gone "$FXPID" 10 || fail "server still running after the hint's umount"
}
# the same on a mount point whose mountinfo line is over 4 KiB (spaces
# are 4 bytes there, \040): the line is read whole, not as two lines. In
# a namespace of its own: the suite's cleanup splits paths at spaces
exported_mp_long_ns() {	# (fx_up would track a path the cleanup splits)
	local d=$PWD i name pid how
	name=$(printf "a'b %.0s" $(seq 60))
	for i in $(seq 12); do d="$d/$name"; done
	mkdir -p "$d"; mkimg src 4; mkimg src2 4; : >"$d/mp"
	"$FX" "$PWD/src2" "$d/mp" || fail "the first export"
	pid=$(fx_pid "$d/mp")
	[ "$(grep -F " $(echo "$d" | sed 's/ /\\040/g')/mp " /proc/self/mountinfo | wc -c)" -gt 4096 ] ||
		fail "the mountinfo line is not over 4096 bytes"
	BAD_MOUNTED_OK=1 bad "$PWD/src" "$d/mp"
	grep -q "already exported" err || fail "refusal: $(cat err)"
	eq "$(findmnt -n --mountpoint "$d/mp" | wc -l)" 1 "mounts on the mount point"
	# the hint's command, pasted into a shell, ends the export
	how=$(sed -n 's/.*(end that export with: \(.*\))$/\1/p' err)
	[ -n "$how" ] && sh -c "$how" || fail "the hint's command: '$how'"
	wait_gone "$pid" 10 || fail "server still running after umount"
}
b_exported_mp_long() { in_ns exported_mp_long_ns; }
b_growable_blockdev() {
	local loop
	bad_setup
	loop=$(losetup -f --show src) || fail "losetup"
	track_loop "$loop"
	bad -g "$loop" "$PWD/mp"
	losetup -d "$loop"
}
b_control_exists() {
	bad_setup; : >ctl
	bad -w --control="$PWD/ctl" "$PWD/src" "$PWD/mp"
	grep -q 'exists already' err || fail "message: $(cat err)"
	[ -f ctl ] || fail "the file at --control was replaced"
}
b_control_removed() {	# a setup failure after the FIFO was made
	bad_setup; mkdir u; chmod 777 u; chmod 755 .; chmod 666 mp
	bad --as 65534 --control="$PWD/u/ctl" "$PWD/src" "$PWD/mp"
	grep -q 'not yours' err || fail "message: $(cat err)"
	refute "the FIFO is left after a failed setup" [ -e u/ctl ]
	return 0
}
b_option() { bad_setup; bad "$@" "$PWD/src" "$PWD/mp"; }
# b_contradiction A B OPTIONS...: refused with one line naming A and B
b_contradiction() {
	local first=$1 second=$2; shift 2
	bad_setup; bad "$@" "$PWD/src" "$PWD/mp"
	grep -qF -- "$first and $second: contradict each other" err ||
		fail "the refusal does not name $first and $second: $(cat err)"
}
# --snapshot FILE without the =: the FILE is an argument too many; say so
b_snapshot_no_equals() {
	bad_setup
	bad --snapshot "$PWD/s.fx" "$PWD/src" "$PWD/mp"
	grep -qF -- "--snapshot=$PWD/s.fx" err || fail "the refusal does not say --snapshot=FILE: $(cat err)"
	refute "FILE made" [ -e s.fx ]
	bad --partitions "$PWD/src" "$PWD/mp"
	grep -qF -- "--partitions: takes SOURCE alone" err || fail "--partitions with MOUNTPOINT: $(cat err)"
	bad --partitions -w "$PWD/src"
	grep -qF -- "-w: does nothing with --partitions" err || fail "--partitions -w: $(cat err)"
	bad --commit --snapshot="$PWD/s.fx" --offset=1M "$PWD/src"
	grep -qF -- "--offset: does nothing with --commit" err || fail "--commit --offset: $(cat err)"
}
b_option_after() { bad_setup; bad "$PWD/src" "$PWD/mp" "$@"; }

# ---------------------------------------------------------------------------
# The runner

N=0 PASSED=0 FAILED=0 SKIPPED=0
IS_ROOT=; [ "$(id -u)" = 0 ] && IS_ROOT=1
FXS=$(realpath -m "$FUSEEXPORT_STATIC")

# why a test needing $1 (space-separated) cannot run here, or nothing
missing() {
	local n
	for n in $1; do
		case $n in
		root) [ -n "$IS_ROOT" ] || { echo "needs root"; return; } ;;
		fuse) [ -c /dev/fuse ] || { echo "needs /dev/fuse"; return; } ;;
		uring) [ -w /sys/module/fuse/parameters/enable_uring ] || { echo "needs FUSE over io_uring (Linux 6.14)"; return; } ;;
		loop) losetup -f >/dev/null 2>&1 || { echo "needs loop devices"; return; } ;;
		xfs) command -v mkfs.xfs >/dev/null &&
			{ grep -qw xfs /proc/filesystems || modprobe -q xfs 2>/dev/null; } ||
			{ echo "needs xfs (xfsprogs and the kernel module)"; return; } ;;
		ext4) command -v mkfs.ext4 >/dev/null && command -v e2fsck >/dev/null || { echo "needs e2fsprogs"; return; } ;;
		*) command -v "$n" >/dev/null || { echo "needs $n"; return; } ;;
		esac
	done
}

result() { # result ok|fail|skip NAME [REASON]
	N=$((N + 1))
	case $1 in
	ok) PASSED=$((PASSED + 1)); echo "ok $N - $2" ;;
	fail) FAILED=$((FAILED + 1)); echo "not ok $N - $2${3:+ # $3}" ;;
	skip)
		if [ "$CI" = true ]; then
			FAILED=$((FAILED + 1)); echo "not ok $N - $2 (skipped under CI=true: $3)"
		else
			SKIPPED=$((SKIPPED + 1)); echo "ok $N - $2 # SKIP $3"
		fi ;;
	esac
}

# t NAME NEEDS FUNCTION ARGS...
# As root a test runs in a mount namespace of its own, so that no namespace
# another program makes meanwhile (another run of this suite, say) holds a
# copy of its mounts and keeps its servers alive after their umount. A test
# in an io_uring mode holds URING_LOCK shared and sets enable_uring; one
# that needs uring (and toggles it) holds it alone.
t() {
	local name=$1 needs=$2 why dir rc wrap=() uring= t0=$SECONDS; shift 2
	if [ -n "$FX_ONLY" ] && ! [[ $name =~ $FX_ONLY ]]; then return; fi
	if [ -n "$MODE_ONLY" ] && ! [[ ${name#"$p "} =~ $MODE_ONLY ]]; then return; fi
	if [ -n "$FX_SKIP" ] && [[ $name =~ $FX_SKIP ]]; then return; fi
	why=$(missing "$needs")
	if [ -n "$why" ]; then result skip "$name" "$why"; return; fi
	dir=$ROOT/t$((N + 1))
	mkdir "$dir"
	case " $needs " in *" uring "*) wrap=(flock -x "$URING_LOCK") ;; esac
	case " $* " in *" --io-uring=on "*|*" --io-uring=auto "*)
		wrap=(flock -s "$URING_LOCK"); uring=Y ;;
	esac
	[ -n "$IS_ROOT" ] && wrap+=(unshare -m --propagation private)
	TESTDIR=$dir FX_URING=$uring IS_ROOT=$IS_ROOT timeout -k 10 "$FX_TIMEOUT" "${wrap[@]}" bash -c 'cd "$TESTDIR" || exit 1
		[ -z "$FX_URING" ] || echo Y >"$URING_PARAM" || exit 1
		[ -z "$IS_ROOT" ] || { drop_foreign_mounts && private_utab; } || exit 1
		exec 9>&2; set -eE; trap '\''echo "FAIL: status $? from: $BASH_COMMAND" >&2'\'' ERR; "$@"' _ "$@" \
		</dev/null >"$dir/log" 2>&1 &
	TPID=$!
	wait "$TPID"; rc=$?		# a wait, so that a signal to the suite is seen at once
	TPID=
	cleanup_all
	case $rc in
	0) result ok "$name" ;;
	77) result skip "$name" "$(cat "$dir/.skip" 2>/dev/null)" ;;
	124|137) result fail "$name" "timed out after ${FX_TIMEOUT}s"; sed 's/^/#   /' "$dir/log" | tail -n 30 ;;
	*) result fail "$name"; { cat "$dir/log"; echo "(exit status $rc)"; } | sed 's/^/#   /' | tail -n 30 ;;
	esac
	# where the suite's time goes (CI has a budget): the slow ones say so
	[ $((SECONDS - t0)) -lt 10 ] || echo "#   took $((SECONDS - t0)) s"
}

export ROOT TOP FX FXS FXIO PY MiB URING_PARAM URING_LOCK
export -f $(compgen -A function | grep -v '^\(t\|result\|missing\|on_exit\)$')

if grep -q io-uring <<<"$MODES" && [ -n "$IS_ROOT" ] && [ -w "$URING_PARAM" ]; then
	URING_WAS=$(cat "$URING_PARAM")
fi

M="root fuse"
t "--help prints usage on stdout, exit 0" "" t_help
t "--version prints the version, exit 0" "" t_version
t "--help, --version >/dev/full: exit non-zero, one line" "" t_help_full

# why a default mode cannot run here (say, no passthrough in this kernel), or
# nothing. Such a mode is one skip (a failure under CI=true); modes given in
# FX_MODES always run.
probe_mode() {
	local d=$ROOT/probe err uring=()
	[ -z "${FX_MODES:-}" ] && [ -n "$IS_ROOT" ] && [ -c /dev/fuse ] || return 0
	mkdir -p "$d"; truncate -s 1M "$d/src"; : >"$d/mp"
	case " $1 " in *" --io-uring=on "*|*" --io-uring=auto "*)	# as t() does
		uring=(flock -s "$URING_LOCK" sh -c 'echo Y >"$0" && exec "$@"' "$URING_PARAM") ;;
	esac
	if ! err=$(timeout 20 "${uring[@]}" "$FX" $1 -w "$d/src" "$d/mp" 2>&1); then
		echo "${err:-fuseexport exit status $?}"
	else
		umount "$d/mp" 2>/dev/null
	fi
	cleanup_all
	rm -rf "$d"
}

IFS=, read -r -a mode_list <<<"$MODES"
for mode in "${mode_list[@]}"; do
	p="[$mode]"
	MODE_ONLY=
	[ -z "${FX_MODES:-}" ] && [ "$mode" = "$ONE_QUEUE" ] && MODE_ONLY=$ONE_QUEUE_TESTS
	why=$(probe_mode "$mode")
	if [ -n "$why" ]; then result skip "$p the whole mode" "$why"; continue; fi
	t "$p stat: size, mode, owner, blocks" "$M" t_stat "$mode"
	t "$p one thread per queue" "$M" t_queues "$mode"
	t "$p read: cmp, dd iflag=direct, short at the end" "$M" t_read "$mode"
	t "$p read-only: writes refused, mounted ro (chmod EROFS), nothing changes" "$M xfs_io python3" t_readonly "$mode"
	t "$p write in place" "$M" t_write "$mode"
	t "$p write past the end: ENOSPC, straddling write cut short" "$M xfs_io python3" t_past_end "$mode"
	t "$p growable: writes past the end grow the source" "$M python3" t_grow "$mode"
	t "$p truncate: writable resizes, read-only refuses" "$M" t_truncate "$mode"
	t "$p O_TRUNC: fixed keeps its size, growable is emptied" "$M python3" t_otrunc "$mode"
	t "$p growable: O_TRUNC and ftruncate reach the source after writes that grew it" "$M xfs_io" t_grow_truncate "$mode"
	t "$p dd of=EXPORT (O_TRUNC) under a mapping of a fixed export: no SIGBUS, size kept" "$M loop python3" t_otrunc_mapped "$mode"
	t "$p reads racing ftruncate 0 / 64M: whole, short or empty, never EIO" "$M python3" t_shrink_race "$mode"
	t "$p chmod: permission bits only, none read-only (EROFS), no g/o without allow_other, no xattrs" "$M" t_chmod "$mode"
	t "$p chown: only with allow_other" "$M" t_chown "$mode"
	t "$p touch -d: new times in stat; read-only refuses (EROFS)" "$M" t_touch "$mode"
	t "$p fallocate punch hole: zeros, a hole in the source" "$M xfs_io" t_fpunch "$mode"
	t "$p fallocate zero range: zeros" "$M xfs_io" t_fzero "$mode"
	t "$p fallocate allocate: reserves, grows a regular file past the end, other modes refused" "$M xfs_io python3" t_falloc "$mode"
	t "$p SEEK_DATA/SEEK_HOLE as on the source" "$M xfs_io" t_seek "$mode"
	t "$p SEEK_DATA sees what the kernel holds dirty: a cached write, an mmap store, to a reader too" "$M xfs_io" t_seek_dirty "$mode"
	t "$p fsync, fdatasync reach the source" "$M xfs_io" t_fsync "$mode"
	t "$p statfs: stat -f, df" "$M" t_statfs "$mode"
	t "$p mmap: read, shared writable write" "$M python3" t_mmap "$mode"
	t "$p copy_file_range and sendfile after a shared mmap write: new bytes, none stale written back" "$M python3" t_splice "$mode"
	t "$p O_DIRECT reads and writes" "$M" t_direct "$mode"
	t "$p clients interrupted mid-request: server goes on" "$M" t_interrupt "$mode"
	t "$p an idle server does not spin" "$M" t_idle "$mode"
	t "$p fio verify crc32c, 4 jobs, psync" "$M fio" t_fio "$mode"
	t "$p fio verify crc32c, 4 jobs, libaio iodepth 16 direct" "$M fio" t_fio_aio "$mode"
	t "$p mkfs.ext4, mount -o loop, e2fsck -fn, qemu-img compare" "$M ext4 qemu-img" t_ext4 "$mode"
	t "$p window: --offset/--size confine every operation, nothing outside changes" "$M xfs_io python3" t_window "$mode"
	t "$p torture: seeded random ops, mmap included, checked against a model" "$M python3" t_torture "$mode"
	t "$p crash: SIGKILL under an fsyncing writer loses nothing fsync'ed" "$M python3" t_crash "$mode"
	t "$p loop device as the source" "$M loop xfs_io python3" t_loopdev "$mode"
	t "$p source fills up: ENOSPC reaches the writer, reads go on" "$M unshare python3" t_enospc "$mode"
	t "$p source fails (xfs shutdown): EIO reaches the client, server survives" "$M unshare loop xfs" t_eio "$mode"
	t "$p source fails (xfs shutdown): an O_DIRECT read of pages read before fails (EIO)" "$M unshare loop xfs" t_eio_direct "$mode"
	t "$p failed writeback: every later fsync fails (EIO), a read-only close does not, exit 1" "$M unshare loop python3" t_fsync_error "$mode"
	t "$p server killed: no client hangs, dead export refused, source intact" "$M" t_sigkill "$mode"
done
MODE_ONLY=

# Fault rules, the volatile cache, the control FIFO: they change nothing on
# the /dev/fuse path, so one mode serves (FX_LAYER_MODE picks another)
LAYER_MODE=${FX_LAYER_MODE:-"-q 2 --passthrough=off"}
p="[$LAYER_MODE]"
U="without root:"
t "$p fault: a bad sector range under ext4 on a loop device: its file gets EIO, the kernel names the sector" "$M loop ext4 debugfs" t_fault_badsector "$LAYER_MODE"
t "$p fault: ENOSPC after 10 writes reaches dd and python; a failed write changes nothing" "$M python3" t_fault_enospc "$LAYER_MODE"
t "$p fault: a read delay shows in fio's completion latency" "$M fio python3" t_fault_delay "$LAYER_MODE"
t "$p fault: op=flush,count=1 fails one fsync, the next is good, --run exits 0" "$M" t_fault_flush "$LAYER_MODE"
t "$p fault: probability with --seed fails the same reads twice" "$M python3" t_fault_seed "$LAYER_MODE"
t "$p fault: a delay cut short: a write asleep in it through a crash fails, never lands; SIGTERM does not wait it out" "$M" t_fault_delay_cut "$LAYER_MODE"
t "$p fault: rules over a window and a snapshot: the export's offsets, the source never written" "$M" t_fault_layers "$LAYER_MODE"
t "$p control FIFO: fault, clear, unknown lines reported, -d names the rule, removed at the end" "$M" t_control
t "$p control FIFO: a line over 4095 bytes dropped whole, its tail never run; one of 4095 taken; one with a NUL dropped" "$M" t_control_long
t "a detached server's messages: --log=FILE, syslog (/dev/log), else the kernel's log, tagged fuseexport[PID]" "$M unshare python3" t_log
t "a detached server's last log line after a crash and after a failed flush says how the export ended and why" "$M unshare" t_log_end
t "a detached server's log: a line is one write to --log=FILE (the static build too)" "$M strace musl-gcc" t_log_write_once
t "$p volatile cache: held until fsync, seen at once; crash drops it; crash torn keeps a seeded subset" "$M python3" t_cache_sectors "$LAYER_MODE"
t "$p volatile cache: -d counts a torn crash's sectors, those past a growable source's end dropped" "$M" t_cache_crash_count "$LAYER_MODE"
t "$p volatile cache: an O_DSYNC write is written through and survives a crash, a plain one is lost" "$M python3" t_cache_dsync "$LAYER_MODE"
t "$p volatile cache: a close is no flush: written and closed without fsync is lost in a crash, fsync'ed survives" "$M python3" t_cache_close "$LAYER_MODE"
t "$p volatile cache: crash drops the pages a client mapped (SIGBUS), not only what the server held" "$M python3" t_cache_crash_mapped "$LAYER_MODE"
t "$p volatile cache: SQLite crashed mid-run keeps every committed transaction" "$M sqlite3" t_cache_sqlite "$LAYER_MODE"
t "$p volatile cache: ext4 on a loop device crashed, journal replayed, fsync'ed files intact, e2fsck clean" "$M loop ext4" t_cache_ext4 "$LAYER_MODE"
t "$p volatile cache: the same with crash torn" "$M loop ext4" t_cache_ext4 "$LAYER_MODE" " torn"
t "$p $U fault: ENOSPC after 10 writes" "$M setpriv fusermount3 unshare python3" t_fault_enospc_user "$LAYER_MODE"
t "$p $U fault: a read delay in fio's latency" "$M setpriv fusermount3 unshare fio python3" t_fault_delay_user "$LAYER_MODE"
t "$p $U fault: probability with --seed" "$M setpriv fusermount3 unshare python3" t_fault_seed_user "$LAYER_MODE"
t "$p $U volatile cache: SQLite crashed mid-run" "$M setpriv fusermount3 unshare sqlite3" t_cache_sqlite_user "$LAYER_MODE"

t "rescue shell: busybox chroot with the static binary" "$M unshare chroot busybox musl-gcc" t_rescue
t "without -f: stat right after return sees the export; server detached" "$M" t_live_on_return
t "SIGTERM: flush, unmount, exit 0" "$M" t_signal TERM
t "SIGINT: flush, unmount, exit 0" "$M" t_signal INT
t "SIGHUP: flush, unmount, exit 0" "$M" t_signal HUP
t "SIGTERM to a detached server unmounts" "$M" t_signal_detached
t "SIGTERM while a client holds the export open: unmounted at once, exit 0 after" "$M python3" t_signal_busy
t "--run: mkfs.ext4 and e2fsck, cmp, COMMAND's status (exit 3, SIGKILL 137), SIGPIPE not ignored; nothing left after" "$M ext4" t_run
t "--run: SIGTERM to fuseexport reaches COMMAND, the export ends after it" "$M" t_run_signal
t "--run: the export killed under COMMAND: reads fail, exit 1 with one line, nothing mounted, no FIFO left" "$M" t_run_dies
t "--run without root: through fusermount3, writes reach the source" "$M setpriv fusermount3 unshare" t_run_user
t "umount (and umount -l) makes the server exit 0" "$M" t_umount_exits
t "umount of a busy export fails and the export goes on" "$M" t_busy_umount
t "-d: one line per request, stays in the foreground" "$M" t_debug
t "passthrough: reads (and growable writes) bypass the server; -w never passes through (on refuses); off and windows fall back" "$M" t_passthrough
t "a start failing after the mount (ulimit -n, queue clones) leaves nothing mounted" "$M" t_start_fails
t "-d 2>&1 | head -n 1: the export goes on after its stderr closes" "$M" t_debug_pipe
t "without root: a failed start (/dev/fuse 0600, ulimit -n) leaves nothing mounted" "$M setpriv fusermount3 unshare" t_nonroot_fail
t "without root: a source path overflowing fusermount3's options refused or mounted whole" "$M setpriv fusermount3 unshare" t_long_source
t "32-bit build (i686, natively or under qemu-i386): 6 GiB file and loop device, writes past 4 GiB land there" "$M loop xfs_io fio" t_m32
t "without root: through fusermount3, allow_other rules, fusermount3 -u, SIGTERM" "$M setpriv fusermount3 unshare" t_nonroot
t "without root: fusermount3 found through PATH=. still unmounts after the server went to /" "$M setpriv fusermount3 unshare" t_nonroot_relative
t "mount(8) helper: mount -t fuse.fuseexport, an fstab line, -o errors" "$M unshare" t_helper
t "mount(8) helper without root: an fstab window (window_offset=, window_size=) in a user line" "$M setpriv fusermount3 unshare" t_helper_user
t "-o list: the same as the long options, generic ones ignored" "$M" t_o_list
t "-o sync: every write flushed (a volatile cache's crash keeps an unsynced write); mount(8)'s generic options taken" "$M" t_o_sync "-q 2 --cache=none"
t "make install: binary in PREFIX/bin, man page, mount(8) helper links in /sbin; found by a user and by mount(8)" "$M make unshare setpriv" t_install
t "docs: every command of README.md and the man page's EXAMPLES runs as written and leaves nothing behind" "$M make unshare setpriv fusermount3 loop ext4 debugfs sfdisk qemu-img qemu-nbd sqlite3 musl-gcc pgrep" t_docs
t "security: mode bits, allow_other, chmod rules, a mounted device refused" "$M setpriv loop ext4" t_security
t "command-line fuzz: random argument lists never crash, hang or leave a mount" "$M" t_cmdline_fuzz
t "valgrind: a short export session is clean" "$M valgrind xfs_io" t_valgrind
t "io_uring: taken when offered, served by the ring threads; auto falls back, on refuses" "$M uring" t_io_uring
t "--cache=read: the export's pages cached by the kernel, none kept by the source (fincore)" "$M fincore" t_cache_once
t "--cache=auto and read are coherent at open: a loop device and a window's file changed behind the export are read anew; a file proved unchanged keeps its pages; a writer's direct writes drop a reader's pages" "$M loop fincore python3" t_cache_coherent
t "--cache=auto: opens at the same time after a change behind the export all read it (none keeps pages another's drop has yet to go through)" "$M python3" t_cache_coherent_opens
t "--cache=auto: a write under way at an open leaves no page a later open keeps (a write sets the times as it starts)" "$M python3" t_cache_coherent_inflight
t "--cache=auto: a file on tmpfs proves nothing (a store through a mapping sets no time), every open reads it anew" "$M python3" t_cache_coherent_tmpfs
t "--cache=writeback as root: the export's bdi not held to FUSE's strict 1% dirty limit" "$M" t_writeback_dirty_limit
t "--cache=writeback: a write past the end is refused at fsync, nothing reaches the source" "$M python3" t_writeback_past_end
t "--cache=writeback: ext4 on a loop device written past a memory-limited cgroup, no hang" "$M loop ext4" t_pressure
t "second export on one mount point refused" "$M" t_same_mp
t "two writable exports of one source: second refused (lock)" "$M" t_lock_rw_rw
t "two read-only exports of one source allowed" "$M" t_lock_ro_ro
t "read-only and writable exports of one source exclude each other" "$M" t_lock_rw_ro
t "image exported over itself" "$M" t_over_itself
t "source and mount point metadata untouched" "$M" t_mode_untouched
t "empty source" "$M python3" t_empty_source
t "4 TiB sparse source: size, the last MiB, writes near and past the end" "$M xfs_io python3" t_huge_source
t "reads sent from a mapping: after writes, unaligned window, page tables bounded" "$M python3" t_mapped_reads
t "names with spaces, commas and backslashes" "$M" t_odd_names
t "relative SOURCE and MOUNTPOINT" "$M" t_relative_paths
t "relative --control, --snapshot=FILE and SOURCE of a detached server: resolved before it goes to /" "$M unshare chroot" t_relative_detach

t "--partitions: the table as sfdisk -d has it (MBR with logical partitions, GPT), exit 0" "sfdisk sgdisk" t_partitions_list
t "--partitions: GPT names of 36 units, surrogate pairs, lone surrogates and controls: UTF-8, a line each; 128 entries" "$M sfdisk sgdisk python3" t_gpt_names
t "--partition: a GPT of 1152 entries holding 1001-1128: each exported, others refused naming them" "$M sfdisk sgdisk" t_gpt_many_entries
t "--partition: mkfs.ext4 in a primary and a logical partition, loop-mounted; the export is dd skip=START" "$M sfdisk loop ext4" t_partition_ext4
t "--partition: mkfs.xfs in a GPT partition, loop-mounted; the export is dd skip=START" "$M sgdisk sfdisk loop xfs" t_partition_xfs
t "--partition: GPT with its primary header or entries zeroed: the backup is used" "$M sgdisk sfdisk" t_gpt_backup
t "--partition: GPT headers that cannot be read (NBD read errors): the backup, else the read error said" "$M sgdisk sfdisk nbdkit" t_gpt_read_errors
t "--partition: MBR tables only Linux reads (two extended primaries, two logical in an EBR, link first, type 0): numbered as partx" "$M python3" t_mbr_chains
t "--partition: GPT on a 4096-byte-sector loop device, and a snapshot of it committed" "$M sgdisk sfdisk loop" t_partition_4k
t "--partition: missing, past the end, garbage, with --offset: refused; a broken extended chain keeps the rest" "$M sfdisk" t_partition_refusals
t "--partitions: GPT entries not 128 bytes, or more than 4 MiB of them, are no table (as Linux)" "sgdisk python3" t_gpt_sizes
t "snapshot: e2fsck -fy repairs a damaged ext4 in partition 2, the image unchanged; resumed, wrong FILE refused, committed" "$M sfdisk loop ext4" t_snapshot_ext4
t "snapshot: xfs_repair repairs a damaged xfs in a GPT partition, the image unchanged; resumed, committed" "$M sgdisk sfdisk loop xfs" t_snapshot_xfs
t "snapshot in memory: writes, punch, zero read back; fixed size; the source read-only, unchanged; gone after" "$M xfs_io python3" t_snapshot_memory
t "snapshot: SEEK_DATA/SEEK_HOLE see data written into holes and holes punched into data" "$M xfs_io" t_snapshot_seek
t "snapshot of 1 TiB: reads at 0, SEEK_DATA and SEEK_HOLE around a block written at 512 GiB" "$M python3" t_snapshot_big
t "snapshot of a source on a read-only bind mount; its commit refused, FILE kept" "$M unshare" t_snapshot_ro_source
t "snapshot: FILE on a full disk: a write whose data got in is flushed and kept (its map's room taken at the start), the next refused; a reserving fallocate reserves" "$M unshare python3 xfs_io" t_snapshot_full
t "snapshot: fio verify randrw and torture, 4 queues, passthrough off" "$M fio python3" t_snapshot_fio
t "snapshot: --commit to a block device held exclusively: refused, told to unmount it" "$M loop" t_commit_busy
t "snapshot: FILE exported again and committed right after umount, while the last server still holds it: waited for" "$M" t_snapshot_again
t "snapshot of an unaligned window: FILE never mapped; the commit lands there alone, says what it did (progress on a terminal), runs again the same; bad FILEs refused" "$M xfs_io script strace" t_snapshot_commit
t "snapshot: FILE on a volatile-cache export crashed (plain, torn) between flushes: every sector as flushed or written since" "$M python3" t_snapshot_crash between
t "snapshot: FILE on a volatile-cache export crashed (plain, torn) during a flush, its map written: the same" "$M python3 strace xfs_io" t_snapshot_crash during
NBD_MODE=${FX_NBD_MODE:--q 2}	# the NBD tests: one representative mode
t "nbd: qemu-nbd on a unix socket: cmp, writes, fsync, fio verify" "$M qemu-nbd fio python3 xfs_io" t_nbd_qemu "$NBD_MODE"
t "nbd: nbd:// over 127.0.0.1 and [::1], named exports" "$M qemu-nbd ss python3" t_nbd_tcp "$NBD_MODE"
t "nbd: -q 4 makes 4 connections where multi-conn is offered, else one carries all" "$M nbdkit ss fio" t_nbd_multi_conn
t "nbd: mkfs.ext4, mount -o loop, e2fsck -fn" "$M qemu-nbd ext4" t_nbd_ext4 "$NBD_MODE"
t "nbd: punch leaves a hole in the image (qemu-img map), zero range, SEEK_DATA/SEEK_HOLE" "$M qemu-nbd qemu-img xfs_io" t_nbd_punch_seek "$NBD_MODE"
t "nbd: zeroing split at the server's maximum block size (32 MiB without one); written zeros where WRITE_ZEROES is refused or missing" "$M nbdkit xfs_io" t_nbd_zero_split "$NBD_MODE"
t "nbd: server killed and restarted under fio verify: no read or write error, nothing lost; flushes fail after" "$M qemu-nbd fio" t_nbd_reconnect
t "nbd: a restart that lost writes never flushed: every fsync after it fails (EIO), one with everything flushed does not" "$M nbdkit python3" t_nbd_lost_unflushed
t "nbd: --cache=read: after a reconnect the kernel's cache is dropped, reads see what the server serves now" "$M qemu-nbd" t_nbd_cache_reconnect
t "nbd: 12 threads of 1 MiB reads and writes, one request at a time served, -q 8 and -q 24: no client hangs" "$M nbdkit qemu-nbd python3" t_nbd_many_callers
t "nbd: server gone for good: EIO after --retry, no hang; back again: works" "$M qemu-nbd" t_nbd_gone "$NBD_MODE"
t "nbd: a TCP peer gone silent (lo down in a network namespace): EIO within 30 s and --retry, no hang; back again: works" "$M qemu-nbd ss" t_nbd_dead_peer "$NBD_MODE"
t "nbd: said while a user waits: no greeting from a one-client server (and why), a lost connection, its return" "$M qemu-nbd" t_nbd_said "$NBD_MODE"
t "nbd: read-only server: -w refused, read-only export works" "$M qemu-nbd" t_nbd_readonly "$NBD_MODE"
t "nbd: nbdkit memory (size not a multiple of 512) and sparse-random (holes)" "$M nbdkit qemu-img python3" t_nbd_nbdkit "$NBD_MODE"
t "nbd: 4 KiB minimum block size: unaligned I/O aligned and read-modify-written" "$M nbdkit fio xfs_io" t_nbd_block_size "$NBD_MODE"
t "nbd: O_DSYNC writes carry FUA (--cache=none, read, writeback O_DIRECT), plain ones not; no FUA offered: a FLUSH follows" "$M nbdkit python3" t_nbd_fua
t "nbd: the server's preferred block size is st_blksize (512 to 1 MiB); a file's is 4096" "$M nbdkit" t_nbd_blksize "$NBD_MODE"
t "nbd: nbd-server on a unix socket" "$M nbd-server" t_nbd_server "$NBD_MODE"
t "nbd: a window on an NBD export" "$M qemu-nbd" t_nbd_window "$NBD_MODE"
t "nbd: fault rules over an NBD export: the rules' ranges fail, the rest reaches the server" "$M qemu-nbd" t_nbd_faults "$NBD_MODE"
t "nbd: a partition of an NBD export; a snapshot over one, then --commit" "$M qemu-nbd sfdisk" t_nbd_layers "$NBD_MODE"
t "nbd: a hostile server: lying replies give EIO, the export goes on" "$M python3" t_nbd_hostile "$NBD_MODE"
t "nbd stress: nbdkit answering one request at a time (noparallel), -q 8, 24, 1: no hang, every byte right" "$M nbdkit nbdcopy gdb python3" t_nbd_stress_serial
t "nbd stress: a server out of order, in many chunks, stalling and cutting replies, -q 2: no error but flushes after a cut, every byte right" "$M gdb python3" t_nbd_stress_chunks
t "nbd stress: the same with 4 KiB blocks (read-modify-write), multi-conn, -q 8" "$M gdb python3" t_nbd_stress_blocks
t "nbd stress: the same failing requests on command (simple replies), -q 1: every error reaches its caller, the rest right" "$M gdb python3" t_nbd_stress_errors
t "nbd stress: qemu-nbd killed and started again under 12 clients, -q 24: no error but flushes, nothing lost" "$M qemu-nbd gdb python3" t_nbd_stress_restart
t "nbd stress: nbdkit's delay filter, -q 2 and 24: no hang, every byte right" "$M nbdkit gdb python3" t_nbd_stress_delay
t "nbd: bad URIs and servers refused with one line" "python3 qemu-nbd" t_nbd_bad

B="bad input:"
t "$B no arguments" "" b_no_args
t "$B one argument" "" b_one_arg
t "$B three arguments" "" b_three_args
t "$B missing source" "" b_missing_source
t "$B unreadable source" "root setpriv" b_unreadable_source
t "$B -w on a source the caller may not write" "root setpriv" b_unwritable_source_user
t "$B -w on a source on a read-only filesystem" "$M unshare" b_unwritable_source_rofs
t "$B -w on a read-only block device" "$M loop" b_unwritable_source_roloop
t "$B directory as source" "" b_dir_source
t "$B fifo as source" "" b_fifo_source
t "$B character device as source" "" b_chardev_source
t "$B symlink to a directory as source" "" b_symlink_dir_source
t "$B missing mount point" "" b_missing_mp
t "$B directory as mount point" "" b_dir_mp
t "$B fifo as mount point" "" b_fifo_mp
t "$B character device as mount point" "root" b_chardev_mp
t "$B mount point already exported" "$M" b_exported_mp
t "$B mount point already exported, its mountinfo line over 4 KiB" "$M" b_exported_mp_long
t "$B -g on a block device" "$M loop" b_growable_blockdev
t "$B --control on a path that exists" "" b_control_exists
t "$B a setup failure after the --control FIFO was made removes it" "root setpriv" b_control_removed
for o in "-q 0" "-q 65" "-q abc" "-q -1" "-q 4x" "-q ''" "--queues=18446744073709551617" \
	"--queues=" "--allow-other=maybe" "--passthrough=sometimes" "--bogus" "-z" "-wz" \
	"--fault=op=reed" "--fault=error=EWHAT" "--fault=delay=5" "--fault=probability=1.5" \
	"--fault=every=0" "--fault=colour=red" "--fault=" "--seed=x" "--write-cache=maybe" \
	"--write-cache=volatile" "--control=" "'--fault=offset= -4096'" "'--fault=count= -5'" \
	"'--fault=delay= 2s'" "--offset=+4096" "-q ' 2'" "'--seed=1 '" "'--fault=offset=4096 ,op=read'"; do
	eval "set -- $o"
	t "$B option $o" "" b_option "$@"
done
for o in "-o ro|-w|-o ro -w" "-o ro|-w|-w -o ro" "-o ro|-g|-g -o ro" "-o ro|-o growable|-o ro,growable" \
	"-o ro|-o rw|-o ro,rw" "-o ro|--snapshot|-o ro --snapshot" "-o ro|--write-cache|-o ro --write-cache=volatile" \
	"-g|--snapshot|-g --snapshot" "-g|--offset|-g --offset=1M" "-g|-o window_size|-g -o window_size=1M" \
	"-g|--partition|-g --partition=1" "--partition|--size|--partition=1 --size=1M" \
	"-o partition|-o window_offset|-o partition=1,window_offset=1M" \
	"-f|--log|-f --log=log" "-d|-o log|-d -o log=log" "--run|--log|--run=true --log=log"; do
	IFS='|' read -r a b args <<<"$o"
	eval "set -- $args"
	t "$B contradiction: $args" "" b_contradiction "$a" "$b" "$@"
done
t "$B --snapshot FILE without its =, --partitions or --commit with what they do not use" "" b_snapshot_no_equals
t "$B -q without its number" "" b_option_after -q
t "$B --queues without its number" "" b_option_after --queues

echo "1..$N"
echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
