#!/usr/bin/env python3
# fxio.py - small I/O clients test.sh needs and the shell tools lack
#
#   fxio.py pwrite FILE OFFSET LENGTH [BYTE]
#       one pwrite(2) of LENGTH bytes (value BYTE, default 0x5a) at OFFSET;
#       prints the count the kernel returned, or the errno name (ENOSPC, ...)
#       of the pwrite or of the open
#   fxio.py mmap-read FILE
#       maps FILE shared read-only and prints the sha256 of the mapping
#   fxio.py mmap-write FILE OFFSET DATAFILE
#       maps FILE shared read-write, copies DATAFILE into it at OFFSET,
#       msync(2)s and unmaps
#   fxio.py strided write|read FILE STRIDE COUNT [SALT]
#       COUNT blocks of 4 KiB at every STRIDE bytes: writes into each one
#       its own bytes (made from its number and SALT), or reads them all,
#       one pread(2) each, and prints the sha256 of what came
#   fxio.py splice FILE NEWPAGE
#       on one O_RDWR open: copy_file_range of page 0 to page 8 and sendfile
#       of page 0 to a scratch file, then new bytes into page 0 through a
#       MAP_SHARED mapping, then copy_file_range of page 0 to page 9 and
#       sendfile again: each must carry what page 0 held at that moment;
#       the new bytes go to NEWPAGE. Exit status 1 on stale bytes.
#   fxio.py map-hold FILE PAGE DIR
#       maps FILE shared read-only, reads page PAGE, creates DIR/mapped, waits
#       for DIR/go to appear, reads page PAGE again: exit status 1 if it
#       changed (a SIGBUS kills it: 135 in the shell)
#   fxio.py shrink-race FILE SECONDS
#       one thread loops ftruncate(0) and ftruncate(64 MiB), another reads
#       64 KiB at 32 MiB; prints the counts of whole, short and empty reads
#       and of errors: exit status 1 on any error
#   fxio.py fsync-error FILE
#       client A (O_RDWR) writes 8 MiB at 512 (not page-aligned, so that
#       a server writes them into the source's page cache rather than
#       O_DIRECT), client B opens read-only and closes, A fsyncs twice, a
#       new client C (O_RDWR) fsyncs and fdatasyncs: prints each step's
#       result, ok, the errno name, or short=N for a short write
#
# And for the Python clients test.sh runs itself (PYTHONPATH=tests):
#   crash(control, fd, command): send command ("crash", "crash torn") to an
#       export's control FIFO and wait until a read of fd fails
#
# SPDX-License-Identifier: GPL-2.0-or-later

import errno
import hashlib
import mmap
import os
import sys
import tempfile
import threading
import time


def pwrite(path, offset, length, byte=0x5A):
    try:
        # O_DSYNC: done when durable, so that with a writeback cache the
        # write-back's verdict is the write's
        fd = os.open(path, os.O_WRONLY | os.O_DSYNC)
    except OSError as e:  # a read-only mount refuses the open
        print(errno.errorcode.get(e.errno, str(e.errno)))
        return
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


def splice(path, newpage):
    page = mmap.PAGESIZE
    fd = os.open(path, os.O_RDWR)
    scratch = tempfile.TemporaryFile()
    bad = []

    def sent():
        os.ftruncate(scratch.fileno(), 0)
        os.lseek(scratch.fileno(), 0, os.SEEK_SET)
        n = os.sendfile(scratch.fileno(), fd, 0, page)
        return os.pread(scratch.fileno(), page, 0) if n == page else b"short"

    def check(what, got, want):
        if got != want:
            bad.append(what)

    old = os.pread(fd, page, 0)
    check("copy_file_range before", os.copy_file_range(fd, fd, page, 0, 8 * page), page)
    check("page 8 after copy_file_range", os.pread(fd, page, 8 * page), old)
    check("sendfile before", sent(), old)
    new = bytes(b ^ 0xA5 for b in old)
    m = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[:] = new
    check("copy_file_range after the mmap write", os.copy_file_range(fd, fd, page, 0, 9 * page), page)
    got = os.pread(fd, page, 9 * page)
    check("page 9 after copy_file_range (old bytes)" if got == old else
          "page 9 after copy_file_range", got, new)
    got = sent()
    check("sendfile after the mmap write (old bytes)" if got == old else
          "sendfile after the mmap write", got, new)
    check("pread of page 0", os.pread(fd, page, 0), new)
    m.flush()
    m.close()
    os.close(fd)
    with open(newpage, "wb") as f:
        f.write(new)
    if bad:
        sys.exit("stale or wrong: " + ", ".join(bad))


def map_hold(path, page_no, where):
    page = mmap.PAGESIZE
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    first = m[page_no * page:(page_no + 1) * page]
    open(os.path.join(where, "mapped"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(where, "go")):
        if time.monotonic() > deadline:
            sys.exit("map-hold: no go in 60 s")
        time.sleep(0.05)
    if m[page_no * page:(page_no + 1) * page] != first:
        sys.exit(f"map-hold: page {page_no} changed under the mapping")
    m.close()


def shrink_race(path, seconds):
    big = 64 << 20
    stop = time.monotonic() + seconds
    counts = {}

    def shrink():
        fd = os.open(path, os.O_RDWR)
        while time.monotonic() < stop:
            os.ftruncate(fd, 0)
            os.ftruncate(fd, big)
        os.close(fd)

    def read():
        fd = os.open(path, os.O_RDONLY)
        while time.monotonic() < stop:
            try:
                n = len(os.pread(fd, 65536, big // 2))
                k = "whole" if n == 65536 else "empty" if n == 0 else "short"
            except OSError as e:
                k = errno.errorcode.get(e.errno, str(e.errno))
            counts[k] = counts.get(k, 0) + 1
        os.close(fd)

    threads = [threading.Thread(target=shrink), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if set(counts) - {"whole", "empty", "short"}:
        sys.exit(1)


def fsync_error(path):
    steps = []

    def step(name, f, want=None):
        try:
            got = f()
            steps.append(f"{name}=ok" if want is None or got == want else f"{name}=short={got}")
        except OSError as e:
            steps.append(f"{name}={errno.errorcode.get(e.errno, e.errno)}")

    a = os.open(path, os.O_RDWR)
    step("write", lambda: os.pwrite(a, os.urandom(8 << 20), 512), 8 << 20)
    b = os.open(path, os.O_RDONLY)
    step("close-ro", lambda: os.close(b))
    step("fsync", lambda: os.fsync(a))
    step("fsync-again", lambda: os.fsync(a))
    c = os.open(path, os.O_RDWR)
    step("fsync-new-client", lambda: os.fsync(c))
    step("fdatasync-new-client", lambda: os.fdatasync(c))
    for fd in (c, a):
        try:
            os.close(fd)
        except OSError:
            pass  # a writer's close may report the error too
    print(" ".join(steps))


def crash(control, fd, command="crash"):
    with open(control, "w") as f:
        f.write(command + "\n")
    for _ in range(50):
        try:
            os.pread(fd, 512, 0)
        except OSError:
            return
        time.sleep(0.1)
    sys.exit("the export still reads after the crash")


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
    elif len(argv) == 4 and argv[1] == "splice":
        splice(argv[2], argv[3])
    elif len(argv) == 5 and argv[1] == "map-hold":
        map_hold(argv[2], int(argv[3]), argv[4])
    elif len(argv) == 4 and argv[1] == "shrink-race":
        shrink_race(argv[2], float(argv[3]))
    elif len(argv) == 3 and argv[1] == "fsync-error":
        fsync_error(argv[2])
    else:
        sys.exit("usage: fxio.py pwrite|mmap-read|mmap-write|strided|splice|"
                 "map-hold|shrink-race|fsync-error ...")


if __name__ == "__main__":
    main(sys.argv)
