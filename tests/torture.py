#!/usr/bin/env python3
# torture.py - fsx-style torture of an exported file, every read checked
#
#   torture.py FILE SEED OPS [WORKERS [fixed|growable]]
#
# With WORKERS = 1, one process runs OPS seeded random operations over the
# whole file: write, read, truncate, punch hole, zero range, fsync and mmap
# reads and writes, overlapping freely, checking every read against an
# in-memory model of the file. With more, each worker owns a disjoint
# stretch of the file and does the same without resizing it.
#
# Splice reads too: copy_file_range within the file (the copy read back at
# once) and sendfile out to a scratch file, also right before and after a
# write through a shared mapping that stays mapped meanwhile; fsync and
# fdatasync from other descriptors of the file (one read-only). Told what
# kind of export FILE is, it reopens it with O_TRUNC now and then: a fixed
# one keeps its size and bytes, a growable one (one worker only) is emptied.
# The seed is printed so that a failure can be replayed; exit status 1 on a
# mismatch or an unexpected error.
#
# SPDX-License-Identifier: GPL-2.0-or-later

import ctypes
import mmap
import os
import random
import sys
import tempfile

PUNCH_HOLE, KEEP_SIZE, ZERO_RANGE = 0x02, 0x01, 0x10
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def worker(path, seed, ops, lo, hi, resize, kind=None):
    """Random operations on [lo, hi) of path; returns a failure or None."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDWR)
    others = [os.open(path, os.O_RDWR), os.open(path, os.O_RDONLY)]
    scratch = tempfile.TemporaryFile()
    size = os.fstat(fd).st_size
    model = bytearray(os.pread(fd, size, 0))
    end = hi if not resize else size
    done = {}
    otrunc = kind == "fixed" or (kind == "growable" and resize)

    def check(off, length, how):
        got = os.pread(fd, length, off) if how == "read" else mapped(off, length)
        want = bytes(model[off:off + length])
        if got != want:
            bad = next(i for i in range(min(len(got), len(want)) + 1)
                       if i >= len(got) or i >= len(want) or got[i] != want[i])
            return f"{how} [{off}, +{length}) differs at byte {off + bad}"
        return None

    def mapped(off, length):
        base = off - off % mmap.PAGESIZE
        with mmap.mmap(fd, off + length - base, offset=base) as m:
            return m[off - base:off - base + length]

    def sent(off, length):
        """[off, +length) of the file by sendfile into the scratch file"""
        out = scratch.fileno()
        os.ftruncate(out, 0)
        os.lseek(out, 0, os.SEEK_SET)
        got = 0
        while got < length:
            n = os.sendfile(out, fd, off + got, length - got)
            if n == 0:
                break
            got += n
        return os.pread(out, got, 0) if got else b""

    def splice_check(off, length, how):
        want = bytes(model[off:off + length])
        got = sent(off, length)
        if got != want:
            return f"sendfile {how} [{off}, +{length}): {len(got)} bytes, " + (
                "wrong bytes" if len(got) == len(want) else f"want {len(want)}")
        return None

    def copy(off, length, dst, how):
        """copy_file_range [off, +length) to dst, read back at once"""
        data = bytes(model[off:off + length])
        got = 0
        while got < length:
            n = os.copy_file_range(fd, fd, length - got, off + got, dst + got)
            if n == 0:
                break
            got += n
        if got != length:
            return f"copy_file_range {how} [{off}, +{length}) to {dst}: {got} bytes"
        model[dst:dst + length] = data
        why = check(dst, length, "read")
        return why and f"copy_file_range {how} [{off}, +{length}) to {dst}: {why}"

    def apart(length, top):
        """two ranges of length in [lo, top) that do not overlap, or None"""
        if top - lo < 2 * length:
            return None
        a = rng.randrange(lo, top - 2 * length + 1)
        b = rng.randrange(a + length, top - length + 1)
        return (a, b) if rng.random() < 0.5 else (b, a)

    for n in range(ops):
        limit = max(end, lo + 1)
        off = rng.randrange(lo, limit)
        length = rng.randrange(1, min(256 * 1024, limit - off) + 1)
        op = rng.choice(["write", "write", "read", "read", "mmap-read", "mmap-write",
                         "punch", "zero", "fsync", "copy", "sendfile", "splice-mmap"] +
                        (["truncate"] if resize else []) + (["otrunc"] if otrunc else []))
        done[op] = done.get(op, 0) + 1
        if op == "write":
            data = rng.randbytes(length)
            if off + length > len(model):
                model.extend(bytes(off + length - len(model)))
            if os.pwrite(fd, data, off) != length:
                return f"op {n}: short write"
            model[off:off + length] = data
            end = max(end, off + length) if resize else end
        elif op == "read":
            why = check(off, min(length, max(0, len(model) - off)), "read")
            if why:
                return f"op {n}: {why}"
        elif op == "mmap-read" and off + length <= len(model):
            why = check(off, length, "mmap read")
            if why:
                return f"op {n}: {why}"
        elif op == "mmap-write" and off + length <= len(model):
            data = rng.randbytes(length)
            base = off - off % mmap.PAGESIZE
            with mmap.mmap(fd, off + length - base, offset=base) as m:
                m[off - base:off - base + length] = data
                m.flush()
            model[off:off + length] = data
        elif op in ("punch", "zero") and off < len(model):
            length = min(length, len(model) - off)
            mode = KEEP_SIZE | (PUNCH_HOLE if op == "punch" else ZERO_RANGE)
            fallocate(fd, mode, off, length)
            model[off:off + length] = bytes(length)
        elif op == "fsync":
            f = rng.choice([fd] + others)
            os.fsync(f) if rng.random() < 0.5 else os.fdatasync(f)
        elif op == "sendfile" and off < len(model):
            why = splice_check(off, length, "")
            if why:
                return f"op {n}: {why}"
        elif op == "copy":
            length = min(length, 64 * 1024)
            pair = apart(length, min(end, len(model)) if resize else hi)
            why = pair and copy(pair[0], length, pair[1], "")
            if why:
                return f"op {n}: {why}"
        elif op == "splice-mmap":
            # splice reads before and after a write through a mapping that
            # stays mapped: the page cache that splice reads through and
            # the one the mapping writes into must be one
            length = min(length, 64 * 1024)
            pair = apart(length, min(end, len(model)) if resize else hi)
            off, dst = pair or (None, None)
            why = pair and (splice_check(off, length, "before an mmap write") or
                            copy(off, length, dst, "before an mmap write"))
            if why:
                return f"op {n}: {why}"
            if pair:
                data = rng.randbytes(length)
                base = off - off % mmap.PAGESIZE
                with mmap.mmap(fd, off + length - base, offset=base) as m:
                    m[off - base:off - base + length] = data
                    model[off:off + length] = data
                    why = (splice_check(off, length, "after an mmap write") or
                           copy(off, length, dst, "after an mmap write"))
            if why:
                return f"op {n}: {why}"
        elif op == "otrunc":
            os.close(fd)
            fd = os.open(path, os.O_RDWR | os.O_TRUNC)
            if kind == "growable":
                del model[:]
                end = 0
        elif op == "truncate":
            new = rng.randrange(0, hi)
            os.ftruncate(fd, new)
            del model[new:]
            model.extend(bytes(new - len(model)))
            end = new
        if os.fstat(fd).st_size != len(model):
            return f"op {n} ({op}): size {os.fstat(fd).st_size}, want {len(model)}"
    why = check(lo, min(end, len(model)) - lo, "final read") if end > lo else None
    for f in [fd] + others:
        os.close(f)
    print(f"seed {seed}: {ops} ops on [{lo}, {hi}): " +
          " ".join(f"{k}={v}" for k, v in sorted(done.items())), flush=True)
    return why


def main():
    path, seed, ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    kind = sys.argv[5] if len(sys.argv) > 5 else None
    if kind not in (None, "fixed", "growable"):
        sys.exit(f"torture.py: {kind}: not fixed or growable")
    size = os.stat(path).st_size
    print(f"torture.py {path} seed {seed}, {ops} ops, {workers} worker(s)", flush=True)
    if workers == 1:
        why = worker(path, seed, ops, 0, size, True, kind)
        if why:
            print(f"FAIL seed {seed}: {why}", flush=True)
        return 1 if why else 0
    stretch = size // workers // mmap.PAGESIZE * mmap.PAGESIZE
    if not stretch:
        sys.exit(f"torture.py: {path} is {size} bytes, too small for {workers} workers")
    pids = []
    for w in range(workers):
        pid = os.fork()
        if pid == 0:
            why = worker(path, seed + w, ops, w * stretch, (w + 1) * stretch, False, kind)
            if why:
                print(f"FAIL seed {seed + w}: {why}", flush=True)
            os._exit(1 if why else 0)
        pids.append(pid)
    return max(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids)


if __name__ == "__main__":
    sys.exit(main())
