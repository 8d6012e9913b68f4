#!/bin/bash
# tests/bench.sh - fuseexport's side-by-side benchmark
#
# Runs the same fio jobs over one source on tmpfs: the source itself (the
# limit), fuseexport with passthrough, fuseexport on the /dev/fuse path with
# one queue (without and with spinning for the next request) and with one
# queue per CPU (without spinning, and as --cache=none does by default), the
# same over FUSE's io_uring transport, the kernel's page cache for reads
# (--cache=read) and for writes too (--cache=writeback), all three with one
# queue per CPU, and
# qemu-storage-daemon's FUSE export (Debian's qemu-system-common) as the
# peer, single-threaded (qsd) and with an iothread per CPU (qsd-mt, QEMU
# 10.1 and later: from a BENCH_PEER_ROOT with a newer one). Prints IOPS,
# the ratios to the source itself and to the peer, and the servers' own
# memory during the QD32 job. Before every job but the cold one
# the target is read once, so that what can be cached is. Then the NBD
# pair: the same file served by qemu-nbd on a unix socket, exported by
# fuseexport (nbd) and by nbdfuse (Debian's libnbd-bin), its peer.
# Only ratios from one run mean anything: the machine is shared and noisy.
#
# BENCH_SOURCE picks the source: file (a file on tmpfs, the default), loop (a
# loop device over it: the block-device rows) or window (--offset=1M of the
# file: the window rows). Columns that cannot take it (passthrough: a
# regular file at its own offsets) are skipped, and said so.
#
#   tests/bench.sh [--markdown]      (root; `make bench` runs it)
#
# BENCH_PEER_ROOT=DIR runs the peers (qemu-storage-daemon, qemu-nbd and
# nbdfuse) from a chroot at DIR, say a Debian sid one for the newest of
# them (debootstrap --variant=minbase sid DIR; apt-get install qemu-utils
# qemu-system-common libnbd-bin in it); fio and fuseexport run from here.
#
# Environment: BENCH_RUNTIME (seconds per job, 10), BENCH_ROUNDS (how many
# times to run everything: medians of cells and of ratios; 1), BENCH_SIZE_MB (1024),
# BENCH_COLUMNS and BENCH_JOBS (names from the lists below, default all),
# FUSEEXPORT, BENCH_NBDFUSE (the nbdfuse to run: a newer one's wrapper).
# A column whose program is missing is skipped, and said so.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -u
cd "$(dirname "$0")/.." || exit 1
RUNTIME=${BENCH_RUNTIME:-10}
ROUNDS=${BENCH_ROUNDS:-1}
SIZE_MB=${BENCH_SIZE_MB:-1024}
SOURCE=${BENCH_SOURCE:-file}
FX=$(realpath "${FUSEEXPORT:-./fuseexport}")
NBDFUSE=${BENCH_NBDFUSE:-nbdfuse}
MARKDOWN=
[ "${1:-}" = --markdown ] && MARKDOWN=1

if [ "$(id -u)" != 0 ]; then
	echo "bench.sh: needs root (it mounts tmpfs and FUSE exports)" >&2
	exit 1
fi
[ -x "$FX" ] || make -s fuseexport >&2 || exit 1

# the peers run here, or in the chroot BENCH_PEER_ROOT
PEER_ROOT=${BENCH_PEER_ROOT:-}
PEER=
if [ -n "$PEER_ROOT" ]; then
	PEER_ROOT=$(realpath "$PEER_ROOT") && [ -x "$PEER_ROOT/bin/sh" ] ||
		{ echo "bench.sh: BENCH_PEER_ROOT is no root file system" >&2; exit 1; }
	PEER="chroot $PEER_ROOT"
fi
peer_has() { $PEER sh -c "command -v $1" >/dev/null 2>&1; }

# fio and the peer, installed if missing (here: a chroot is the caller's)
need=
command -v fio >/dev/null || need="$need fio"
if [ -z "$PEER" ]; then
	command -v qemu-storage-daemon >/dev/null || need="$need qemu-system-common"
	command -v qemu-nbd >/dev/null || need="$need qemu-utils"
	command -v nbdfuse >/dev/null || need="$need libnbd-bin"
fi
if [ -n "$need" ] && command -v apt-get >/dev/null; then
	echo "bench.sh: installing$need" >&2
	{ apt-get -o DPkg::Lock::Timeout=600 update -q &&
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
		install -y -q --no-install-recommends $need; } >/dev/null 2>&1
fi
command -v fio >/dev/null || { echo "bench.sh: fio is missing" >&2; exit 1; }

# everything happens in a private mount namespace, so nothing can be left
# mounted outside it whatever happens
if [ -z "${BENCH_IN_NS:-}" ]; then
	BENCH_IN_NS=1 exec unshare -m --propagation private "$0" "$@"
fi

DIR=$(mktemp -d /tmp/fuseexport-bench.XXXXXX) || exit 1
SERVER= NBDSERVER= URING=/sys/module/fuse/parameters/enable_uring URING_WAS= LOOP=
cleanup() {
	[ -n "$URING_WAS" ] && echo "$URING_WAS" >"$URING"
	[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null
	umount -l "$DIR/nbdfuse" 2>/dev/null
	[ -n "$NBDSERVER" ] && kill "$NBDSERVER" 2>/dev/null
	umount -l "$DIR/mp" 2>/dev/null
	[ -n "$LOOP" ] && exec 7<&- && losetup -d "$LOOP"
	if [ -n "$PEER" ]; then
		umount -l "$PEER_ROOT$DIR" 2>/dev/null
		rmdir "$PEER_ROOT$DIR" 2>/dev/null
		for d in dev proc sys; do umount -l "$PEER_ROOT/$d" 2>/dev/null; done
	fi
	umount -l "$DIR" 2>/dev/null
	rmdir "$DIR" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mount -t tmpfs -o size=$((SIZE_MB + 256))M tmpfs "$DIR" || exit 1
# the chroot sees the /dev, /proc and /sys of here, and $DIR at the same
# path, shared, so the peers' FUSE mounts show here too (all of it in
# this private mount namespace: gone with it)
if [ -n "$PEER" ]; then
	mount --make-rshared "$DIR" || exit 1
	for d in dev proc sys; do
		mount --rbind "/$d" "$PEER_ROOT/$d" || exit 1
	done
	mkdir -p "$PEER_ROOT$DIR" && mount --bind "$DIR" "$PEER_ROOT$DIR" || exit 1
fi
dd if=/dev/urandom of="$DIR/img" bs=1M count="$SIZE_MB" status=none || exit 1
: >"$DIR/mp"
SRC=$DIR/img WINDOW= QSD_DRIVER=file SIZE=${SIZE_MB}M
case $SOURCE in
file) ;;
loop)	LOOP=$(losetup -f --show "$DIR/img") || exit 1
	# held open throughout: the kernel drops a block device's page
	# cache at its last close, which would leave the device itself cold
	# after every warm-up while the servers, holding it, stay warm
	exec 7<"$LOOP"
	SRC=$LOOP QSD_DRIVER=host_device ;;
window)	WINDOW="--offset=1M" SIZE=$((SIZE_MB - 1))M ;;
*)	echo "bench.sh: BENCH_SOURCE is file, loop or window" >&2; exit 1 ;;
esac

mkdir "$DIR/nbdfuse"
NBD_URI="nbd+unix:///?socket=$DIR/nbd.sock"

# column name and how to start it; "file" is the source itself
COLUMNS_ALL="file pt fuse-q1 spin-q1 fuse-qN none uring read writeback qsd qsd-mt nbd nbdfuse"
COLUMNS=${BENCH_COLUMNS:-$COLUMNS_ALL}
for col in $COLUMNS; do
	case " $COLUMNS_ALL " in *" $col "*) ;; *)
		echo "bench.sh: no column $col (there are: $COLUMNS_ALL)" >&2; exit 1 ;;
	esac
done
declare -A START=(
	[pt]="$FX -g --passthrough=on"
	[fuse-q1]="$FX -w $WINDOW --passthrough=off --cache=none --spin=off -q 1"
	[spin-q1]="$FX -w $WINDOW --passthrough=off --cache=none -q 1"
	[fuse-qN]="$FX -w $WINDOW --passthrough=off --cache=none --spin=off -q $(nproc)"
	[none]="$FX -w $WINDOW --passthrough=off --cache=none -q $(nproc)"
	[uring]="$FX -w $WINDOW --passthrough=off --cache=none --io-uring=on"
	[read]="$FX -w $WINDOW --cache=read -q $(nproc)"
	[writeback]="$FX -w $WINDOW --cache=writeback -q $(nproc)"
	[nbd]="$FX -w -q 2"
)

# the file a column's jobs run on
target_of() {
	case $1 in
	file) echo "$SRC" ;;
	nbdfuse) echo "$DIR/nbdfuse/img" ;;
	*) echo "$DIR/mp" ;;
	esac
}

# start_nbd: qemu-nbd serving the image on $DIR/nbd.sock; NBDSERVER = its pid
start_nbd() {
	local i
	peer_has qemu-nbd ||
		{ echo "qemu-nbd missing (qemu-utils)" >"$DIR/why"; return 1; }
	rm -f "$DIR/nbd.sock"
	$PEER qemu-nbd -f raw -t -e 16 -k "$DIR/nbd.sock" "$DIR/img" 2>"$DIR/nbd.err" &
	NBDSERVER=$!
	for i in $(seq 100); do
		[ -S "$DIR/nbd.sock" ] && return 0
		sleep 0.1
	done
	head -n 1 "$DIR/nbd.err" >"$DIR/why"
	return 1
}

# start_column NAME: export the image as $DIR/mp; SERVER = the server's pid.
# Returns non-zero, with why in $DIR/why, if the column cannot run here.
start_column() {
	local i src
	SERVER=
	case $1 in
	file) return 0 ;;
	pt)	[ "$SOURCE" = file ] ||
			{ echo "passthrough needs a regular file at its own offsets" >"$DIR/why"; return 1; } ;;&
	qsd|qsd-mt)	[ "$SOURCE" != window ] ||
			{ echo "no window in this comparison" >"$DIR/why"; return 1; } ;;&
	qsd|qsd-mt)
		peer_has qemu-storage-daemon ||
			{ echo "qemu-storage-daemon missing (qemu-system-common)" >"$DIR/why"; return 1; }
		# qsd-mt: an iothread per CPU serving the export's queues (the
		# FUSE export takes an iothread list since QEMU 10.1)
		local objs=() list=""
		if [ "$1" = qsd-mt ]; then
			for i in $(seq 0 $(($(nproc) - 1))); do
				objs+=(--object "iothread,id=io$i"); list+=",iothread.$i=io$i"
			done
		fi
		$PEER qemu-storage-daemon "${objs[@]}" \
			--blockdev node-name=file0,driver=$QSD_DRIVER,filename="$SRC" \
			--blockdev node-name=raw0,driver=raw,file=file0 \
			--export type=fuse,id=exp0,node-name=raw0,mountpoint="$DIR/mp",writable=on$list \
			--pidfile "$DIR/qsd.pid" >"$DIR/server.err" 2>&1 &
		for i in $(seq 100); do
			findmnt -n "$DIR/mp" >/dev/null && break
			sleep 0.1
		done
		SERVER=$(cat "$DIR/qsd.pid" 2>/dev/null) ;;
	nbdfuse)
		peer_has "$NBDFUSE" ||
			{ echo "nbdfuse missing (libnbd-bin)" >"$DIR/why"; return 1; }
		start_nbd || return 1
		$PEER "$NBDFUSE" "$DIR/nbdfuse/img" "$NBD_URI" 2>"$DIR/server.err" &
		SERVER=$!
		for i in $(seq 100); do
			[ -e "$DIR/nbdfuse/img" ] && return 0
			kill -0 "$SERVER" 2>/dev/null || break
			sleep 0.1
		done
		head -n 1 "$DIR/server.err" >"$DIR/why"
		SERVER=
		return 1 ;;
	*)
		# FUSE over io_uring needs the kernel's switch (put back on exit)
		if [ "$1" = uring ] && [ -w "$URING" ] && [ -z "$URING_WAS" ]; then
			URING_WAS=$(cat "$URING")
			echo Y >"$URING"
		fi
		# the NBD column exports qemu-nbd's export of the image
		src=$SRC
		if [ "$1" = nbd ]; then
			start_nbd || return 1
			src=$NBD_URI
		fi
		${START[$1]} -f "$src" "$DIR/mp" 2>"$DIR/server.err" &
		SERVER=$!
		for i in $(seq 100); do
			findmnt -n "$DIR/mp" >/dev/null && break
			kill -0 "$SERVER" 2>/dev/null || break
			sleep 0.1
		done ;;
	esac
	findmnt -n "$DIR/mp" >/dev/null && return 0
	head -n 1 "$DIR/server.err" >"$DIR/why"
	SERVER=
	return 1
}

stop_column() {
	[ -n "$SERVER" ] || return 0
	# fuseexport and nbdfuse end with the umount; qemu-storage-daemon
	# needs a signal
	if [ "$col" = nbdfuse ]; then
		umount "$DIR/nbdfuse" 2>/dev/null
	else
		umount "$DIR/mp" 2>/dev/null
	fi
	case $col in qsd|qsd-mt) kill "$SERVER" ;; esac
	while kill -0 "$SERVER" 2>/dev/null; do sleep 0.1; done
	SERVER=
	if [ -n "$NBDSERVER" ]; then
		kill "$NBDSERVER"
		wait "$NBDSERVER" 2>/dev/null
		NBDSERVER=
	fi
}

JOBS=${BENCH_JOBS:-seqread seqwrite randread randwrite randread-2j randwrite-2j randread-qd32 randread-cold seqdirect-128k seqdirect-1m}
declare -A JOB=(
	[seqread]="--rw=read --bs=1M"
	[seqwrite]="--rw=write --bs=1M"
	[randread]="--rw=randread --bs=4k"
	[randwrite]="--rw=randwrite --bs=4k"
	[randread-2j]="--rw=randread --bs=4k --numjobs=2"
	[randwrite-2j]="--rw=randwrite --bs=4k --numjobs=2"
	[randread-qd32]="--rw=randread --bs=4k --ioengine=libaio --iodepth=32 --direct=1"
	[randread-cold]="--rw=randread --bs=4k"
	# each read a request of its own all the way down (an NBD server's
	# cost per large request shows here)
	[seqdirect-128k]="--rw=read --bs=128k --direct=1"
	[seqdirect-1m]="--rw=read --bs=1M --direct=1"
)

for job in $JOBS; do
	[ -n "${JOB[$job]:-}" ] || { echo "bench.sh: no job $job" >&2; exit 1; }
done

# run_job TARGET JOB: print the job's IOPS, reads and writes summed
run_job() {
	# fio drops the file's cached pages before a job unless told not to:
	# only the cold job starts from nothing
	fio --name=bench --filename="$1" --size="$SIZE" --ioengine=psync \
		--invalidate=$([ "$2" = randread-cold ] && echo 1 || echo 0) \
		${JOB[$2]} --time_based --runtime="$RUNTIME" --group_reporting \
		--output-format=json 2>/dev/null |
	python3 -c 'import json, sys
j = json.load(sys.stdin)["jobs"][0]
print(round(j["read"]["iops"] + j["write"]["iops"]))' 2>/dev/null || echo 0
}

# max_rss PID: sample the server's own memory, RssAnon plus its page tables
# (KiB), until told to stop; print the largest. VmRSS would also count the
# source's pages that fuseexport maps to send READ replies from: the page
# cache, shared with everyone, not the server's.
max_rss() {
	local max=0 kb
	while [ ! -e "$DIR/stop-sampling" ]; do
		kb=$(awk '/^(RssAnon|VmPTE):/ { kb += $2 } END { print kb }' \
			"/proc/$1/status" 2>/dev/null)
		[ "${kb:-0}" -gt "$max" ] && max=$kb
		sleep 0.2
	done
	echo "$max"
}

# Job by job, each column started afresh for it, so that the figures of one
# row are taken within a minute of each other on this noisy machine; with
# BENCH_ROUNDS, all of it that many times: each cell shows its median, each
# ratio the median of the rounds' ratios (a round's figures are neighbours,
# a cell's medians may come from rounds ten minutes apart).
declare -A ALL RSS SKIPPED	# ALL: each cell's IOPS, round by round
RAN=
for round in $(seq "$ROUNDS"); do
	for job in $JOBS; do
		for col in $COLUMNS; do
			[ -n "${SKIPPED[$col]:-}" ] && continue
			if ! start_column "$col" </dev/null >/dev/null; then
				echo "bench.sh: column $col skipped: $(cat "$DIR/why")" >&2
				SKIPPED[$col]=1
				continue
			fi
			case " $RAN " in *" $col "*) ;; *) RAN="$RAN $col" ;; esac
			target=$(target_of "$col")
			# warm what can be cached, or drop it for the cold job
			if [ "$job" = randread-cold ]; then
				sync; echo 3 >/proc/sys/vm/drop_caches
			else
				dd if="$target" of=/dev/null bs=1M status=none
			fi
			if [ "$job" = randread-qd32 ] && [ -n "$SERVER" ]; then
				rm -f "$DIR/stop-sampling"
				max_rss "$SERVER" >"$DIR/rss" &
				sampler=$!
			fi
			iops=$(run_job "$target" "$job")
			ALL[$col,$job]="${ALL[$col,$job]:-} $iops"
			if [ "$job" = randread-qd32 ] && [ -n "$SERVER" ]; then
				touch "$DIR/stop-sampling"
				wait "$sampler"
				RSS[$col]="${RSS[$col]:-} $(cat "$DIR/rss")"
			fi
			echo "bench.sh: round $round: $col $job $iops IOPS" >&2
			stop_column
		done
	done
done
median() { printf '%s\n' $1 | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
for key in "${!RSS[@]}"; do RSS[$key]=$(median "${RSS[$key]}"); done

# the tables: IOPS, then each column's ratio to the file and to the peer
row() {
	if [ -n "$MARKDOWN" ]; then
		printf '| %s ' "$@"; echo '|'
	else
		printf '%-14s' "$1"; shift; printf ' %12s' "$@"; echo
	fi
}
ratio() { # ratio "A1 A2 .." "B1 B2 ..": the median of round by round A/B
	python3 -c 'import statistics, sys
a, b = ([float(v) for v in s.split()] for s in sys.argv[1:])
r = [x / y for x, y in zip(a, b) if y]
print(f"{statistics.median_low(r):.2f}x" if r else "-")' "$1" "$2"
}
rule() {
	[ -n "$MARKDOWN" ] || return 0
	local r="|---" c
	for c in $RAN; do r="$r|---:"; done
	echo "$r|"
}

echo "fuseexport bench: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs," \
	"Linux $(uname -r), ${SIZE_MB} MiB $SOURCE on tmpfs, ${RUNTIME}s per job," \
	"$ROUNDS round(s): IOPS medians, ratios medians of each round's"
[ -n "$PEER" ] && echo "peers from $PEER_ROOT: $($PEER qemu-nbd --version 2>/dev/null | head -n1)," \
	"$($PEER nbdfuse --version 2>/dev/null | head -n1)"
echo
echo "IOPS"
row job $RAN; rule
for job in $JOBS; do
	vals=(); for col in $RAN; do vals+=("$(median "${ALL[$col,$job]:-}")"); done
	row "$job" "${vals[@]}"
done
for base in file qsd qsd-mt nbdfuse; do
	case " $RAN " in *" $base "*) ;; *) continue ;; esac
	echo; echo "ratio to $base"
	row job $RAN; rule
	for job in $JOBS; do
		vals=()
		for col in $RAN; do vals+=("$(ratio "${ALL[$col,$job]:-}" "${ALL[$base,$job]:-}")"); done
		row "$job" "${vals[@]}"
	done
done
echo; echo "server memory during randread-qd32: RssAnon + VmPTE (KiB)"
vals=(); for col in $RAN; do vals+=("${RSS[$col]:--}"); done
row rss $RAN; rule; row KiB "${vals[@]}"
