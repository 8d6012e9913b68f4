#!/bin/sh
# tests/arch-fetch.sh DEBARCH SUITE PACKAGE - print the path of PACKAGE's .deb
# for Debian architecture DEBARCH from SUITE (bullseye, bookworm or trixie),
# downloaded once with apt-get download into FX_ARCH_CACHE (default
# /var/cache/fuseexport-arch), never into the repository. apt-get runs with
# its own sources and lists there: the system's apt setup is not touched.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -eu
deb=$1 suite=$2 pkg=$3
CACHE=${FX_ARCH_CACHE:-/var/cache/fuseexport-arch}
APT="$CACHE/apt"
aptq() {
	apt-get -q -o Dir::Etc::sourcelist="$APT/sources.list" -o Dir::Etc::sourceparts=/nonexistent \
		-o Dir::State::lists="$APT/lists" -o Dir::Cache="$APT/cache" -o Dir::State::status=/dev/null \
		-o APT::Architectures::=amd64 -o APT::Architectures::=arm64 -o APT::Architectures::=armhf \
		-o APT::Architectures::=i386 -o APT::Architectures::=s390x -o APT::Architectures::=riscv64 \
		-o Debug::NoLocking=1 "$@"
}
f=$(ls "$CACHE/debs/${pkg}_"*"_$deb.deb" 2>/dev/null | head -1)
if [ -z "$f" ]; then
	mkdir -p "$APT/lists/partial" "$APT/cache" "$CACHE/debs"
	if [ ! -e "$APT/updated" ]; then
		for s in bookworm trixie bullseye; do
			echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
				"http://deb.debian.org/debian $s main"
		done >"$APT/sources.list"
		aptq update >&2
		touch "$APT/updated"
	fi
	(cd "$CACHE/debs" && aptq download "$pkg:$deb/$suite" >&2)
	f=$(ls "$CACHE/debs/${pkg}_"*"_$deb.deb" | head -1)
fi
echo "$f"
