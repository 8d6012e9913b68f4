#!/bin/sh
# tests/arch-deps.sh - install with apt-get what tests/arch.sh and
# `make static ARCH=...` need and lack: the cross compilers, musl for each
# architecture Debian 12 has it for (multiarch musl-dev:ARCH), qemu-system
# and qemu-user, and Debian 13's musl for riscv64 (Debian 12 has none) into
# FX_ARCH_CACHE. Kept apart from tests/deps.sh, as they are big (about 1 GiB).
# A no-op when everything is there.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -e
pkgs="gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
	gcc-s390x-linux-gnu gcc-i686-linux-gnu musl-tools musl-dev:arm64 musl-dev:armhf musl-dev:s390x
	musl-dev:i386 qemu-system-arm qemu-system-misc qemu-system-x86 qemu-system-data opensbi
	qemu-user qemu-utils cpio fdisk kmod xz-utils zstd"
need=
for p in $pkgs; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q ' ok installed$' || need="$need $p"
done
# riscv64's musl: Debian 13's musl-dev, unpacked, without its debug
# sections (their ULEB128 relocations crash Debian 12's ld), and a specs
# file for the cross gcc that points there
riscv_musl() {
	local r="${FX_ARCH_CACHE:-/var/cache/fuseexport-arch}/musl-riscv64" f
	[ -e "$r/musl-gcc.specs" ] && return 0
	f=$(sh "$(dirname "$0")/arch-fetch.sh" riscv64 trixie musl-dev) || return 1
	rm -rf "$r" && mkdir -p "$r" && dpkg-deb -x "$f" "$r" || return 1
	for f in "$r"/usr/lib/riscv64-linux-musl/*.o "$r"/usr/lib/riscv64-linux-musl/*.a; do
		riscv64-linux-gnu-objcopy --strip-debug "$f" || return 1
	done
	sed "s|/usr/|$r/usr/|g" "$r/usr/lib/riscv64-linux-musl/musl-gcc.specs" >"$r/musl-gcc.specs.new" &&
		mv "$r/musl-gcc.specs.new" "$r/musl-gcc.specs"
}
[ -z "$need" ] && { riscv_musl; exit; }
if [ "$(id -u)" != 0 ]; then
	echo "arch-deps.sh: missing:$need (run as root to install them)" >&2
	exit 1
fi
echo "arch-deps.sh: installing$need" >&2
have=$(dpkg --print-foreign-architectures)
added=
for a in arm64 armhf s390x i386; do
	echo "$have" | grep -qx $a || { dpkg --add-architecture $a; added=1; }
done
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $need
riscv_musl
