#!/usr/bin/env python3
"""gptedit.py IMAGE [--sector N] EDIT...: rewrite the primary GPT of IMAGE
(one sgdisk made) as no tool would, its CRCs made right, and zero the
backup header so that only the primary counts. EDITs, in order:

  name=I:XXXX,YYYY,...  entry I's name (1-based) as these UTF-16 units (hex)
  esize=N               entries N bytes apart (each entry's 128 bytes, then
                        zeros), at the same LBA
  count=N               N entries (those past the old count are zeros)

The entry array is written sparse: a large one of zeros costs no space.
SPDX-License-Identifier: GPL-2.0-or-later
"""
import os
import struct
import sys
import zlib


def main():
    args = sys.argv[1:]
    sector = 512
    if len(args) >= 2 and args[1] == '--sector':
        sector = int(args[2])
        del args[1:3]
    path, edits = args[0], args[1:]
    with open(path, 'r+b') as f:
        f.seek(sector)
        h = bytearray(f.read(sector))
        assert h[:8] == b'EFI PART', 'no primary GPT header'
        hsize, = struct.unpack_from('<I', h, 12)
        lba, count, esize = struct.unpack_from('<QII', h, 72)
        f.seek(lba * sector)
        entries = [bytearray(f.read(esize)) for _ in range(count)]
        for edit in edits:
            key, value = edit.split('=', 1)
            if key == 'name':
                i, units = value.split(':')
                name = b''.join(struct.pack('<H', int(u, 16)) for u in units.split(','))
                e = entries[int(i) - 1]
                e[56:128] = name.ljust(72, b'\0')[:72]
            elif key == 'esize':
                esize = int(value)
                entries = [e[:128].ljust(esize, b'\0') for e in entries]
            elif key == 'count':
                count = int(value)
                entries = entries[:count]
            else:
                sys.exit('gptedit.py: unknown edit ' + edit)
        # the array: what the entries hold, then zeros up to count
        crc = 0
        f.seek(lba * sector)
        for e in entries:
            f.write(e)
            crc = zlib.crc32(e, crc)
        zeros = (count - len(entries)) * esize
        block = bytes(1 << 20)
        left = zeros
        while left:
            n = min(left, len(block))
            crc = zlib.crc32(block[:n], crc)
            left -= n
        end = lba * sector + len(entries) * esize + zeros
        if end > os.fstat(f.fileno()).st_size:
            f.truncate(end)
        struct.pack_into('<QIII', h, 72, lba, count, esize, crc)
        struct.pack_into('<I', h, 16, 0)
        struct.pack_into('<I', h, 16, zlib.crc32(bytes(h[:hsize])))
        f.seek(sector)
        f.write(h)
        # the backup header gone
        size = os.fstat(f.fileno()).st_size
        f.seek((size // sector - 1) * sector)
        f.write(bytes(sector))


main()
