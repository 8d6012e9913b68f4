#!/bin/sh
# tests/deps.sh - install with apt-get the Debian packages test.sh needs and lacks
#
# A no-op when everything is there. test.sh runs it when root (unless
# FX_NO_INSTALL=1), .ci/run always. apt-get waits for a busy dpkg lock.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -e
pkgs="gcc make libc6-dev fio xfsprogs e2fsprogs qemu-utils musl-tools busybox-static fdisk gdisk
	python3 util-linux mount procps fuse3 clang libclang-rt-14-dev valgrind sqlite3
	nbdkit nbd-server libnbd-bin iproute2 strace gdb gcc-i686-linux-gnu libc6-dev-i386-cross qemu-user"
need=
for p in $pkgs; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q ' ok installed$' ||
		need="$need $p"
done
[ -z "$need" ] && exit 0
if ! command -v apt-get >/dev/null; then
	echo "deps.sh: missing:$need (and no apt-get to install them)" >&2
	exit 1
fi
if [ "$(id -u)" != 0 ]; then
	echo "deps.sh: missing:$need (run as root to install them)" >&2
	exit 1
fi
echo "deps.sh: installing$need" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $need
