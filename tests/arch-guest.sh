#!/bin/sh
# tests/arch-guest.sh - the rescue cases, run inside a qemu-system guest by
# tests/arch.sh: busybox's own tools against the static fuseexport, one
# TAP line each on the console ("ok N - what" or "not ok N - what: why"),
# then "# arch-guest: N passed, N failed".
#
# The host made three disks, which /init links by their size (the order of
# vda, vdb, vdc is not theirs on every machine), and serves an image over NBD:
#   /dev/fxa  64 MiB, GPT: partition 1 at 1 MiB and 2 at 17 MiB, 16 MiB
#             each; writes go past 40 MiB
#   /dev/fxb  16 MiB, MBR: partition 1 at 1 MiB, 8 MiB
#   /dev/fxc  24 MiB scratch for the snapshot, faults and volatile cache
#   /dev/fxd  6 GiB, sparse, for offsets past 4 GiB
# and /arch.conf sets P2_MD5, MBR1_MD5 (of those partitions), NBD_PORT,
# NBD_MD5 (of the NBD image's first 4 MiB).
#
# SPDX-License-Identifier: GPL-2.0-or-later
. /arch.conf
FX=/bin/fuseexport
n=0 passed=0 failed=0
ok() { n=$((n + 1)) passed=$((passed + 1)); echo "ok $n - $1"; }
notok() { n=$((n + 1)) failed=$((failed + 1)); echo "not ok $n - $1: $2"; }
# check WHAT COMMAND...: ok when COMMAND succeeds, with its output otherwise
check() {
	what=$1; shift
	if out=$("$@" 2>&1); then ok "$what"; else notok "$what" "$(echo $out | head -c 300)"; fi
}
# md5 FILE [SKIP_MIB COUNT_MIB]: the md5 of FILE or of that part of it
md5() {
	if [ $# = 1 ]; then md5sum <"$1"; else dd if="$1" bs=1M skip="$2" count="$3" 2>/dev/null | md5sum; fi |
		cut -d' ' -f1
}
# gone PID: wait up to 10 s for PID to end
gone() {
	i=0
	while kill -0 "$1" 2>/dev/null; do
		i=$((i + 1)); [ $i -gt 100 ] && return 1; sleep 0.1
	done
}
server_of() { pidof fuseexport | tr ' ' '\n' | sort -n | tail -1; }
# unmount MP: umount, and the server must end with it
unmount() {
	pid=$(server_of)
	umount "$1" || return 1
	[ -z "$pid" ] || gone "$pid" || { echo "server $pid still runs after umount $1"; return 1; }
}

mkdir -p /mnt && cd /mnt && touch d p2 m1 s nbd f v
dd if=/dev/urandom of=/tmp/r1 bs=64k count=16 2>/dev/null
dd if=/dev/urandom of=/tmp/r2 bs=4k count=64 2>/dev/null

# 1. the whole disk, writable, in each cache mode (fallbacks on old kernels)
for mode in auto none read writeback; do
	if ! $FX -w --cache=$mode /dev/fxa d 2>/tmp/err; then
		notok "export /dev/fxa -w --cache=$mode" "$(cat /tmp/err)"; continue
	fi
	seek=$((640 + 16 * ${#mode}))	# 40 MiB and on, apart per mode
	check "--cache=$mode: size is 64 MiB" [ "$(stat -c %s d)" = $((64 << 20)) ]
	dd if=/tmp/r1 of=d bs=64k seek=$seek conv=notrunc 2>/dev/null
	check "--cache=$mode: dd write, read back through the export" \
		sh -c "dd if=d bs=64k skip=$seek count=16 2>/dev/null | cmp - /tmp/r1"
	dd if=/tmp/r2 of=d bs=4k seek=$((seek * 16 + 512)) oflag=direct conv=notrunc 2>/dev/null
	check "--cache=$mode: O_DIRECT write, O_DIRECT read back" \
		sh -c "dd if=d bs=4k skip=$((seek * 16 + 512)) count=64 iflag=direct 2>/dev/null | cmp - /tmp/r2"
	check "--cache=$mode: umount ends the server" unmount d
	check "--cache=$mode: both writes are on /dev/fxa" sh -c \
		"dd if=/dev/fxa bs=64k skip=$seek count=16 iflag=direct 2>/dev/null | cmp - /tmp/r1 &&
		 dd if=/dev/fxa bs=4k skip=$((seek * 16 + 512)) count=64 iflag=direct 2>/dev/null | cmp - /tmp/r2"
done

# 1a. passthrough and FUSE over io_uring asked for outright: they work where
# the kernel has them, else the export is refused with a line naming them
# (read-only, of a file on tmpfs: the kernel passes through to regular
# files only, and a fixed-size writable export keeps its writes)
dd if=/dev/urandom of=/tmp/img bs=1M count=8 2>/dev/null
for opt in passthrough io-uring; do
	if $FX --$opt=on /tmp/img d 2>/tmp/err; then
		check "--$opt=on: the kernel has it; the export reads as the file" cmp d /tmp/img
		check "--$opt=on: umount" unmount d
	else
		check "--$opt=on: refused, naming it ($(head -c 120 /tmp/err))" grep -qi "${opt%-*}" /tmp/err
	fi
done

# 1b. offsets past 4 GiB (32-bit CPUs): a 6 GiB disk, written at 5 GiB + 4 KiB
if $FX -w /dev/fxd d 2>/tmp/err; then
	check "6 GiB disk: size" [ "$(stat -c %s d)" = 6442450944 ]
	dd if=/tmp/r1 of=d bs=4k seek=1310721 conv=notrunc 2>/dev/null
	check "6 GiB disk: the write at 5 GiB + 4 KiB reads back" \
		sh -c "dd if=d bs=4k skip=1310721 count=256 2>/dev/null | cmp - /tmp/r1"
	check "6 GiB disk: umount" unmount d
	check "6 GiB disk: the write is at 5 GiB + 4 KiB on the disk, not 4 GiB lower" sh -c \
		"dd if=/dev/fxd bs=4k skip=1310721 count=256 iflag=direct 2>/dev/null | cmp - /tmp/r1 &&
		 ! dd if=/dev/fxd bs=4k skip=262145 count=256 iflag=direct 2>/dev/null | cmp -s - /tmp/r1"
else
	notok "export /dev/fxd (6 GiB)" "$(cat /tmp/err)"
fi

# 2. partitions by number: GPT and MBR (their fields are little-endian on
# every CPU)
$FX --partitions /dev/fxa | sed 's/^/# /'
if $FX --partition=2 /dev/fxa p2 2>/tmp/err; then
	check "GPT partition 2: 16 MiB" [ "$(stat -c %s p2)" = $((16 << 20)) ]
	check "GPT partition 2: the bytes the host put there" [ "$(md5 p2)" = "$P2_MD5" ]
	check "GPT partition 2: umount" unmount p2
else
	notok "export --partition=2 /dev/fxa" "$(cat /tmp/err)"
fi
if $FX --partition=1 /dev/fxb m1 2>/tmp/err; then
	check "MBR partition 1: 8 MiB and the host's bytes" \
		[ "$(stat -c %s m1)/$(md5 m1)" = "$((8 << 20))/$MBR1_MD5" ]
	check "MBR partition 1: umount" unmount m1
else
	notok "export --partition=1 /dev/fxb" "$(cat /tmp/err)"
fi

# 3. a snapshot to FILE: the source untouched, resumed, then committed
before=$(md5 /dev/fxc)
if $FX -w --snapshot=/tmp/s.fx /dev/fxc s 2>/tmp/err; then
	dd if=/tmp/r1 of=s bs=64k seek=8 conv=notrunc 2>/dev/null
	check "snapshot: the write reads back" sh -c "dd if=s bs=64k skip=8 count=16 2>/dev/null | cmp - /tmp/r1"
	check "snapshot: umount" unmount s
	check "snapshot: the source is untouched" [ "$(md5 /dev/fxc)" = "$before" ]
	if $FX --snapshot=/tmp/s.fx /dev/fxc s 2>/tmp/err; then
		check "snapshot: resumed from FILE" sh -c "dd if=s bs=64k skip=8 count=16 2>/dev/null | cmp - /tmp/r1"
		check "snapshot: umount after resuming" unmount s
	else
		notok "snapshot: resume from FILE" "$(cat /tmp/err)"
	fi
	check "snapshot: --commit" $FX --commit --snapshot=/tmp/s.fx /dev/fxc
	check "snapshot: committed into the source, FILE removed" sh -c \
		"dd if=/dev/fxc bs=64k skip=8 count=16 iflag=direct 2>/dev/null | cmp - /tmp/r1 && ! [ -e /tmp/s.fx ]"
else
	notok "export --snapshot=/tmp/s.fx /dev/fxc" "$(cat /tmp/err)"
fi

# 4. an NBD source: qemu-nbd on the host, through qemu's user network
# (the host is 10.0.2.2 there); the host checks the guest's write after
if $FX -w nbd://10.0.2.2:$NBD_PORT nbd 2>/tmp/err; then
	check "NBD: 32 MiB" [ "$(stat -c %s nbd)" = $((32 << 20)) ]
	check "NBD: the image's first 4 MiB" [ "$(md5 nbd 0 4)" = "$NBD_MD5" ]
	dd if=nbd of=nbd bs=1M count=4 seek=8 conv=notrunc 2>/dev/null
	dd if=/tmp/r2 of=nbd bs=4k seek=4096 oflag=direct conv=notrunc 2>/dev/null
	check "NBD: O_DIRECT write reads back" sh -c "dd if=nbd bs=4k skip=4096 count=64 iflag=direct 2>/dev/null | cmp - /tmp/r2"
	check "NBD: the copy reads back" [ "$(md5 nbd 8 4)" = "$NBD_MD5" ]
	check "NBD: umount" unmount nbd
else
	notok "export nbd://10.0.2.2:$NBD_PORT" "$(cat /tmp/err)"
fi
echo "10.0.2.2 nbdhost" >/etc/hosts
if $FX nbd://nbdhost:$NBD_PORT nbd 2>/tmp/err; then
	check "NBD by host name (/etc/hosts)" [ "$(md5 nbd 0 4)" = "$NBD_MD5" ]
	check "NBD by host name: umount" unmount nbd
else
	notok "NBD by host name (/etc/hosts)" "$(cat /tmp/err)"
fi

# 5. fault rules: one range fails with EIO, the rest reads
if $FX --fault=op=read,offset=1M,length=4096,error=EIO /dev/fxc f 2>/tmp/err; then
	check "fault: a read of the range fails" sh -c \
		"! dd if=f of=/dev/null bs=4k skip=256 count=1 iflag=direct 2>/dev/null"
	check "fault: a read beside it succeeds" \
		dd if=f of=/dev/null bs=4k skip=257 count=1 iflag=direct
	check "fault: umount" unmount f
else
	notok "export --fault=..." "$(cat /tmp/err)"
fi

# 6. the volatile cache: what was flushed survives a crash, what was held
# (a file still open) is lost; reads fail after the crash; umount ends it
if $FX -w --write-cache=volatile --control=/tmp/ctl /dev/fxc v 2>/tmp/err; then
	dd if=/tmp/r2 of=v bs=4k seek=1024 conv=notrunc,fsync 2>/dev/null
	# the held write: every close of a descriptor of the export flushes,
	# so a background shell keeps v on fd 1 through the crash (no
	# redirection of its own moves fd 1) and says on fd 3 once it wrote
	mkfifo /tmp/ready /tmp/go
	{ printf held-in-the-volatile-cache; exec 3>&-; read x </tmp/go; } 1<>v 3>/tmp/ready &
	cat /tmp/ready
	# the reads that wait for the crash close the export too: give the
	# control thread a second to take the line before the first of them
	echo crash >/tmp/ctl
	sleep 1
	i=0
	while dd if=v of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null && [ $i -lt 50 ]; do
		i=$((i + 1)); sleep 0.1
	done
	check "volatile: reads fail after the crash" sh -c "! dd if=v of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null"
	echo >/tmp/go; wait
	check "volatile: umount after the crash" unmount v
	check "volatile: the flushed write is on the disk" sh -c \
		"dd if=/dev/fxc bs=4k skip=1024 count=64 iflag=direct 2>/dev/null | cmp - /tmp/r2"
	check "volatile: the held write is not" sh -c \
		"! dd if=/dev/fxc bs=512 count=1 iflag=direct 2>/dev/null | grep -q held-in"
else
	notok "export --write-cache=volatile" "$(cat /tmp/err)"
fi

check "no server left" [ -z "$(pidof fuseexport)" ]
echo "# arch-guest: $passed passed, $failed failed"
