#!/usr/bin/env python3
# fxio.py - small I/O clients test.sh needs and the shell tools lack
#
#   fxio.py pwrite FILE OFFSET LENGTH [BYTE]
#       one pwrite(2) of LENGTH bytes (value BYTE, default 0x5a) at OFFSET;
#       prints the count the kernel returned, or the errno name (ENOSPC, ...)
#   fxio.py mmap-read FILE
#       maps FILE shared read-only and prints the sha256 of the mapping
#   fxio.py mmap-write FILE OFFSET DATAFILE
#       maps FILE shared read-write, copies DATAFILE into it at OFFSET,
#       msync(2)s and unmaps
#   fxio.py strided write|read FILE STRIDE COUNT [SALT]
#       COUNT blocks of 4 KiB at every STRIDE bytes: writes into each one
#       its own bytes (made from its number and SALT), or reads them all,
#       one pread(2) each, and prints the sha256 of what came
#
# SPDX-License-Identifier: GPL-2.0-or-later

import errno
import hashlib
import mmap
import os
import sys


def pwrite(path, offset, length, byte=0x5A):
    fd = os.open(path, os.O_WRONLY)
    try:
        print(os.pwrite(fd, bytes([byte]) * length, offset))
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
    finally:
        os.close(fd)


def mmap_read(path):
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        print(hashlib.sha256(m).hexdigest())
        m.close()


def mmap_write(path, offset, datafile):
    with open(datafile, "rb") as d:
        data = d.read()
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE)
        m[offset:offset + len(data)] = data
        m.flush()
        m.close()


def strided(how, path, stride, count, salt):
    fd = os.open(path, os.O_RDWR if how == "write" else os.O_RDONLY)
    digest = hashlib.sha256()
    for i in range(count):
        if how == "write":
            block = hashlib.sha256(b"%d %s" % (i, salt.encode())).digest() * 128
            os.pwrite(fd, block, i * stride)
        else:
            digest.update(os.pread(fd, 4096, i * stride))
    os.close(fd)
    if how == "read":
        print(digest.hexdigest())


def main(argv):
    if len(argv) >= 5 and argv[1] == "pwrite":
        byte = int(argv[5], 0) if len(argv) > 5 else 0x5A
        pwrite(argv[2], int(argv[3], 0), int(argv[4], 0), byte)
    elif len(argv) == 3 and argv[1] == "mmap-read":
        mmap_read(argv[2])
    elif len(argv) == 5 and argv[1] == "mmap-write":
        mmap_write(argv[2], int(argv[3], 0), argv[4])
    elif len(argv) in (6, 7) and argv[1] == "strided":
        strided(argv[2], argv[3], int(argv[4], 0), int(argv[5], 0),
                argv[6] if len(argv) > 6 else "")
    else:
        sys.exit("usage: fxio.py pwrite|mmap-read|mmap-write|strided ...")


if __name__ == "__main__":
    main(sys.argv)
