#!/bin/sh
# tests/arch.sh TARGET - boot Debian's kernel for TARGET under qemu-system
# (TCG) into an initramfs of busybox, the fuse module and the static
# fuseexport, and run the rescue cases of tests/arch-guest.sh there.
#
# TARGET: aarch64, aarch64-16k (trixie's 16K-page kernel), armhf, riscv64
# (trixie), s390x, i386, x86_64-6.1 (Debian 12) or x86_64-5.10 (Debian 11).
# The kernels and busybox come from Debian's archive through apt-get download
# with a private apt directory under FX_ARCH_CACHE (default
# /var/cache/fuseexport-arch), never into the repository; tests/arch-deps.sh
# installs the cross compilers and qemu (as root, unless FX_NO_INSTALL=1).
# FX_ARCH_BIN names a static binary to test instead of make static's.
# Prints the guest's TAP lines, a host-side check, and a closing line
# "arch TARGET: N passed, N failed"; exits non-zero on any failure.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -eu
TARGET=${1:?usage: tests/arch.sh TARGET}
TOP=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${FX_ARCH_CACHE:-/var/cache/fuseexport-arch}
TIMEOUT=${FX_ARCH_TIMEOUT:-1500}

# per target: Debian architecture, suite, kernel package, busybox suite,
# make's ARCH, qemu command line, console, disk and network devices
pci="virtio-blk-pci virtio-net-pci"
case $TARGET in
aarch64) deb=arm64 suite=bookworm kpkg=linux-image-6.1.0-50-arm64-unsigned arch=aarch64
	qemu="qemu-system-aarch64 -M virt -cpu cortex-a57" con=ttyAMA0 dev=$pci ;;
aarch64-16k) deb=arm64 suite=trixie kpkg=linux-image-6.12.117+deb13-arm64-16k-unsigned arch=aarch64
	qemu="qemu-system-aarch64 -M virt -cpu max,pauth=off" con=ttyAMA0 dev=$pci ;;
armhf) deb=armhf suite=bookworm kpkg=linux-image-6.1.0-50-armmp arch=armhf
	qemu="qemu-system-arm -M virt,highmem=off -cpu cortex-a15" con=ttyAMA0 dev=$pci ;;
riscv64) deb=riscv64 suite=trixie kpkg=linux-image-6.12.117+deb13-riscv64 arch=riscv64
	qemu="qemu-system-riscv64 -M virt -bios default" con=ttyS0 dev=$pci ;;
s390x) deb=s390x suite=bookworm kpkg=linux-image-6.1.0-50-s390x arch=s390x
	qemu="qemu-system-s390x -M s390-ccw-virtio" con=ttysclp0 dev="virtio-blk-ccw virtio-net-ccw" ;;
i386) deb=i386 suite=bookworm kpkg=linux-image-6.1.0-50-686 arch=i386
	qemu="qemu-system-i386" con=ttyS0 dev=$pci ;;
x86_64-6.1) deb=amd64 suite=bookworm kpkg=linux-image-6.1.0-50-amd64-unsigned arch=x86_64
	qemu="qemu-system-x86_64 -cpu max" con=ttyS0 dev=$pci ;;
x86_64-5.10) deb=amd64 suite=bullseye kpkg=linux-image-5.10.0-32-amd64-unsigned arch=x86_64
	qemu="qemu-system-x86_64 -cpu max" con=ttyS0 dev=$pci ;;
*) echo "tests/arch.sh: unknown target $TARGET" >&2; exit 2 ;;
esac
# busybox-static: Debian 12's, but riscv64 has it only from Debian 13 on
bbsuite=bookworm; [ "$deb" = riscv64 ] && bbsuite=trixie

[ "${FX_NO_INSTALL:-0}" = 1 ] || [ "$(id -u)" != 0 ] || sh "$TOP/tests/arch-deps.sh"

fetch() { sh "$TOP/tests/arch-fetch.sh" $deb "$2" "$1"; }
kdeb=$(fetch "$kpkg" $suite)
bbdeb=$(fetch busybox-static $bbsuite)

# the kernel, unpacked once, with modules.dep made by depmod (which reads
# compressed modules; the few the guest loads are uncompressed below, as
# busybox's insmod may not take them compressed)
K="$CACHE/unpacked/$kpkg"
if [ ! -e "$K/.done" ]; then
	rm -rf "$K" && mkdir -p "$K" && dpkg-deb -x "$kdeb" "$K"
	kver=$(ls "$K/boot" | sed -n 's/^config-//p')
	mdir=$(ls -d "$K/lib/modules/$kver" "$K/usr/lib/modules/$kver" 2>/dev/null | head -1)
	depmod -b "${mdir%/lib/modules/*}" "$kver"
	touch "$K/.done"
fi
kver=$(ls "$K/boot" | sed -n 's/^config-//p')
kernel=$(ls "$K/boot/vmlinuz-$kver" "$K/boot/vmlinux-$kver" 2>/dev/null | head -1)
mdir=$(ls -d "$K/lib/modules/$kver" "$K/usr/lib/modules/$kver" 2>/dev/null | head -1)

W=$(mktemp -d /tmp/fx-arch.XXXXXX)
nbdpid=
cleanup() {
	[ -z "$nbdpid" ] || kill "$nbdpid" 2>/dev/null || true
	if [ -n "${FX_ARCH_KEEP:-}" ]; then echo "# kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT INT TERM

# the initramfs: busybox, fuseexport, the modules and their dependencies
# in load order, the guest script and /init
R="$W/root"
mkdir -p "$R/bin" "$R/lib/mod" "$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/etc"
dpkg-deb --fsys-tarfile "$bbdeb" | tar -xO --wildcards '*bin/busybox' >"$R/bin/busybox"
chmod 755 "$R/bin/busybox"
bin=fuseexport-static; [ $arch = x86_64 ] || bin=fuseexport-static-$arch
if [ -n "${FX_ARCH_BIN:-}" ]; then	# a static binary built elsewhere
	bin=$(realpath "$FX_ARCH_BIN")
else
	(cd "$TOP" && make -s static ARCH=$arch >&2)
	bin=$TOP/$bin
fi
cp "$bin" "$R/bin/fuseexport"
cp "$TOP/tests/arch-guest.sh" "$R/arch-guest.sh"
# want MODULE: append MODULE's dependencies, then itself, to the load order
want() {
	local path d
	path=$(awk -F: -v m="/$1.ko" '{ p = $1; sub(/\.(xz|zst|gz)$/, "", p) }
		substr(p, length(p) - length(m) + 1) == m { print $1; exit }' "$mdir/modules.dep")
	[ -n "$path" ] || return 0	# built in, or not on this architecture
	grep -qx "$path" "$W/order" 2>/dev/null && return 0
	for d in $(awk -F: -v p="$path" '$1 == p { print $2 }' "$mdir/modules.dep"); do
		d=${d##*/}; want "${d%%.ko*}"
	done
	grep -qx "$path" "$W/order" 2>/dev/null || echo "$path" >>"$W/order"
}
: >"$W/order"
for m in fuse virtio_pci virtio_mmio virtio_ccw virtio_blk virtio_net; do want $m; done
while read -r p; do
	m=${p##*/}
	case $m in
	*.xz) xz -dc "$mdir/$p" >"$R/lib/mod/${m%.xz}" ;;
	*.zst) zstd -qdc "$mdir/$p" >"$R/lib/mod/${m%.zst}" ;;
	*.gz) gzip -dc "$mdir/$p" >"$R/lib/mod/${m%.gz}" ;;
	*) cp "$mdir/$p" "$R/lib/mod/" ;;
	esac
	echo "${m%.ko*}.ko" >>"$R/lib/mod/order"
done <"$W/order"
touch "$R/lib/mod/order"

# the disks (see tests/arch-guest.sh) and the NBD image, served by qemu-nbd
D="$W/disks"; mkdir "$D"
truncate -s 64M "$D/a"
printf 'label: gpt\nstart=2048, size=32768\nstart=34816, size=32768\n' | sfdisk -q "$D/a"
head -c 16M /dev/urandom | dd of="$D/a" bs=1M seek=17 conv=notrunc status=none
truncate -s 16M "$D/b"
printf 'label: dos\nstart=2048, size=16384, type=83\n' | sfdisk -q "$D/b"
head -c 8M /dev/urandom | dd of="$D/b" bs=1M seek=1 conv=notrunc status=none
head -c 24M /dev/urandom >"$D/c"
truncate -s 6G "$D/d"
head -c 4M /dev/urandom >"$D/nbd" && truncate -s 32M "$D/nbd"
port=$((20000 + $$ % 20000))
qemu-nbd -f raw -t -e 4 -b 127.0.0.1 -p $port "$D/nbd" &
nbdpid=$!
cat >"$R/arch.conf" <<EOF
P2_MD5=$(dd if="$D/a" bs=1M skip=17 count=16 status=none | md5sum | cut -d' ' -f1)
MBR1_MD5=$(dd if="$D/b" bs=1M skip=1 count=8 status=none | md5sum | cut -d' ' -f1)
NBD_PORT=$port
NBD_MD5=$(head -c 4M "$D/nbd" | md5sum | cut -d' ' -f1)
EOF
cat >"$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
dmesg -n 1
while read -r m; do insmod /lib/mod/$m || echo "# insmod $m failed"; done </lib/mod/order
i=0; while ! [ -b /dev/vdd ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
for d in /sys/block/vd?; do	# by size: 64, 16 and 24 MiB, 6 GiB
	case $(cat $d/size) in 131072) l=a ;; 32768) l=b ;; 49152) l=c ;; 12582912) l=d ;; *) continue ;; esac
	ln -s /dev/${d##*/} /dev/fx$l
done
ip link set lo up; ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up
echo "# kernel $(uname -r) $(uname -m), $(dmesg | grep -o 'fuse: init (API version [0-9.]*)'), page size $(sed -n 's/^KernelPageSize: *//p' /proc/self/smaps | head -1)"
echo "# arch-guest: start $(cut -d' ' -f1 /proc/uptime)"
sh /arch-guest.sh 2>&1
echo "# arch-guest: end $(cut -d' ' -f1 /proc/uptime)"
sync; poweroff -f
EOF
chmod 755 "$R/init" "$R/arch-guest.sh"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) >"$W/initrd"

set -- 
n=0
for f in a b c d; do
	n=$((n + 1))
	set -- "$@" -drive file="$D/$f",format=raw,if=none,id=d$n,cache=unsafe \
		-device ${dev% *},drive=d$n
done
echo "# $TARGET: $(basename "$kernel"), $(basename "$bbdeb"), ${bin##*/} $(stat -c %s "$bin") bytes"
start=$(date +%s)
timeout $TIMEOUT $qemu -m 512 -smp 1 -nographic -no-reboot -kernel "$kernel" -initrd "$W/initrd" \
	-append "console=$con panic=-1 quiet" "$@" \
	-netdev user,id=n0,restrict=off -device ${dev#* },netdev=n0 </dev/null >"$W/console" 2>&1 || true
took=$(($(date +%s) - start))
tr -d '\r' <"$W/console" >"$W/log"
grep -E '^(ok|not ok|#) ' "$W/log" || true
pass=$(grep -c '^ok ' "$W/log" || true)
fails=$(grep -c '^not ok ' "$W/log" || true)
# the guest's copy through NBD, seen from the host
if [ "$(dd if="$D/nbd" bs=1M skip=8 count=4 status=none | md5sum)" = "$(head -c 4M "$D/nbd" | md5sum)" ]; then
	echo "ok - host: the guest's NBD write is in the image"; pass=$((pass + 1))
else
	echo "not ok - host: the guest's NBD write is not in the image"; fails=$((fails + 1))
fi
if ! grep -q '^# arch-guest: .* passed' "$W/log"; then
	echo "not ok - the guest did not finish in ${TIMEOUT}s; its console ends:"
	tail -30 "$W/log" | sed 's/^/#   /'
	fails=$((fails + 1))
fi
boot=$(sed -n 's/^# arch-guest: start //p' "$W/log")
echo "# $TARGET: guest up after ${boot:-?}s of guest time, $took s in all"
echo "$TARGET: $pass passed, $fails failed"
[ "$fails" = 0 ]
