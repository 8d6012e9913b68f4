#!/usr/bin/env python3
# nbdstress.py - many clients at once on one export, every byte checked
#
#   nbdstress.py FILE INIT [--threads N] [--seconds S] [--seed N]
#                [--max-size BYTES] [--bulk] [--errors] [--flush-errors]
#                [--seek] [--no-direct]
#                [--shared-blocks] [--pid PID] [--hang S] [--model OUT]
#
# THREADS client threads, each with its own stretch of FILE (an export) and
# its own descriptors, one buffered and one O_DIRECT, run seeded random
# reads, writes (random bytes or zeros), fsyncs, fdatasyncs, punched holes
# and zeroed ranges of 1 byte to --max-size (default 4 MiB, sizes spread
# evenly over the powers of two, half of them aligned to 4096) for SECONDS;
# with --bulk, only reads and writes of whole pages, 512 KiB and up (what
# fills a connection's socket both ways).
# Each keeps a model of its stretch, starting from INIT (a file of FILE's
# size holding what FILE holds now, or "zeros"), and checks every read
# against it. With --seek, SEEK_DATA must not skip a byte the model holds
# as data. The stretches' borders fall on 4096-byte boundaries, or with
# --shared-blocks in the middle of them, so that neighbours share blocks
# (for a server whose blocks are read-modify-written; not with the page
# cache, which the kernel keeps per page).
#
# No error is expected, unless --errors: then EIO (or a short count) is
# taken, and the bytes a failed write, punch or zero covered may hold old
# or new values until a read shows which. With --flush-errors, only an
# fsync or fdatasync may fail with EIO (a server restarted while it held
# writes not yet flushed: the export cannot tell what it lost). At the end the stretches are
# fsync'ed, the bytes still unknown read and checked (a read failing with
# EIO is tried again), and --model OUT gets the model: FILE's bytes as
# they must be on the server.
#
# No hang: an operation that takes more than --hang seconds (default 30)
# ends the run; with --pid, every thread of that process (the export's
# server) is shown first by gdb and by /proc's kernel stacks.
#
# Exit status 0, or 1 with "FAIL: ..." on stderr on a wrong byte or an
# unexpected error, 2 on a hang. The seed is printed first.
#
# SPDX-License-Identifier: GPL-2.0-or-later

import argparse
import ctypes
import errno
import math
import mmap
import os
import random
import subprocess
import sys
import threading
import time

PUNCH_HOLE, KEEP_SIZE, ZERO_RANGE = 0x02, 0x01, 0x10
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
MAX_SIZE = 4 << 20
OPS = [("read", 34), ("write", 30), ("punch", 8), ("zero", 8),
       ("fsync", 4), ("fdatasync", 2), ("seek", 4)]
BULK_OPS = [("read", 50), ("write", 50)]


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Failure(Exception):
    pass


class Client(threading.Thread):
    """One client thread on [lo, hi) of the file"""

    def __init__(self, run, index, lo, hi):
        super().__init__(daemon=True)
        self.run_ = run
        self.index = index
        self.lo, self.hi = lo, hi
        self.rng = random.Random(run.seed * 1000 + index)
        self.unsure = []  # [start, end, alt]: alt the other value, or None: any
        self.busy = None  # (what, since)
        self.failure = None
        self.counts = {}
        self.errors = 0
        self.buf = mmap.mmap(-1, run.max_size + mmap.PAGESIZE)  # aligned

    # -- the model
    def mark_unsure(self, a, b, new):
        """A failed change of [a, b) to new: each byte is old or new"""
        m = self.run_.model
        old = bytes(m[a:b])
        rest, overlap = self.cut_unsure(a, b)
        p = a
        for x, y in sorted(overlap) + [(b, b)]:
            if p < x:
                rest.append([p, x, old[p - a:x - a]])
            if x < y:
                rest.append([x, y, None])  # a third value: anything goes
            p = max(p, y)
        self.unsure = rest
        m[a:b] = new

    def cut_unsure(self, a, b):
        """The unsure runs with [a, b) cut out of them, and the cut parts"""
        rest, overlap = [], []
        for x, y, alt in self.unsure:
            if y <= a or x >= b:
                rest.append([x, y, alt])
                continue
            if x < a:
                rest.append([x, a, alt and alt[:a - x]])
            if y > b:
                rest.append([b, y, alt and alt[b - x:]])
            overlap.append((max(x, a), min(y, b)))
        return rest, overlap

    def forget_unsure(self, a, b):
        self.unsure = self.cut_unsure(a, b)[0]

    def set(self, a, data):
        self.run_.model[a:a + len(data)] = data
        self.forget_unsure(a, a + len(data))

    def check(self, a, got, how):
        """got was read at a: fail unless the model allows it, then learn"""
        m = self.run_.model
        b = a + len(got)
        want = m[a:b]
        if got != want:
            allowed = bytearray(len(got))  # 1: the byte may differ from want
            for x0, y0, alt in self.unsure:
                for i in range(max(x0, a), min(y0, b)):
                    if alt is None or got[i - a] == alt[i - x0]:
                        allowed[i - a] = 1
            for i in range(len(got)):
                if got[i] != want[i] and not allowed[i]:
                    raise Failure(
                        f"{how} [{a}, +{len(got)}) differs at byte {a + i}: got "
                        f"{got[i]:#04x}, want {want[i]:#04x} (the model's next "
                        f"bytes {bytes(want[i:i + 16]).hex()}, read "
                        f"{bytes(got[i:i + 16]).hex()})")
        self.set(a, got)

    # -- the operations
    def span(self):
        """A random stretch of the client's own: (offset, length)"""
        room = self.hi - self.lo
        if self.run_.bulk:  # 512 KiB to the most, whole pages
            n = int(2 ** self.rng.uniform(19, math.log2(min(self.run_.max_size, room))))
            n = max(4096, min(n, room) // 4096 * 4096)
            off = self.lo + self.rng.randrange((room - n) // 4096 + 1) * 4096
            return off, n
        n = int(2 ** self.rng.uniform(0, math.log2(min(self.run_.max_size, room))))
        n = max(1, min(n, room))
        off = self.lo + self.rng.randrange(room - n + 1)
        if self.rng.random() < 0.5:
            a = (off + 4095) // 4096 * 4096
            e = (off + n) // 4096 * 4096
            if a < e:
                off, n = a, e - a
        return off, n

    def expect(self, e, what, flush=False):
        """An error from what: taken with --errors (EIO), or with
        --flush-errors if what is a flush, else a failure"""
        if (self.run_.errors or (flush and self.run_.flush_errors)) and \
                e.errno == errno.EIO:
            self.errors += 1
            if self.errors <= 5:
                print(f"nbdstress: client {self.index}: {what}: {e.strerror} "
                      "(taken)", flush=True)
            return
        raise Failure(f"{what}: {e.strerror} ({errno.errorcode.get(e.errno)})")

    def io(self, direct, write, off, n, data=None):
        """One pread or pwrite: the count, or raises OSError"""
        if not direct:
            fd = self.fd
            if write:
                return os.pwrite(fd, data, off)
            got = os.pread(fd, n, off)
            return got
        mv = memoryview(self.buf)[:n]
        if write:
            mv[:] = data
            return os.pwritev(self.dfd, [mv], off)
        k = os.preadv(self.dfd, [mv], off)
        return bytes(mv[:k])

    def op(self, name):
        off, n = self.span()
        direct = self.run_.direct and self.rng.random() < 0.5
        how = f"{name} {'O_DIRECT ' if direct else ''}[{off}, +{n})"
        self.busy = (how, time.monotonic())
        if name == "read":
            try:
                got = self.io(direct, False, off, n)
            except OSError as e:
                return self.expect(e, how)
            if len(got) != n:
                self.expect(OSError(errno.EIO, f"short read of {len(got)}"), how)
            self.check(off, got, how)
        elif name == "write":
            if self.rng.random() < 0.1:
                data = bytes(n)
            else:
                p = self.rng.randrange(len(self.run_.pool) - n + 1)
                data = self.run_.pool[p:p + n]
            try:
                k = self.io(direct, True, off, n, data)
            except OSError as e:
                self.mark_unsure(off, off + n, data)
                return self.expect(e, how)
            self.set(off, data[:k])
            if k != n:
                self.mark_unsure(off + k, off + n, data[k:])
                self.expect(OSError(errno.EIO, f"short write of {k}"), how)
        elif name in ("punch", "zero"):
            mode = KEEP_SIZE | (PUNCH_HOLE if name == "punch" else ZERO_RANGE)
            try:
                fallocate(self.dfd if direct else self.fd, mode, off, n)
            except OSError as e:
                self.mark_unsure(off, off + n, bytes(n))
                return self.expect(e, how)
            self.set(off, bytes(n))
        elif name in ("fsync", "fdatasync"):
            try:
                getattr(os, name)(self.dfd if direct else self.fd)
            except OSError as e:
                return self.expect(e, how, flush=True)
        elif name == "seek":
            self.seek(off, how)

    def seek(self, off, how):
        """SEEK_DATA from off: nothing the model holds as data skipped"""
        try:
            q = os.lseek(self.fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:
                return self.expect(e, how)
            q = self.run_.size
        if q < off:
            raise Failure(f"{how}: SEEK_DATA went back to {q}")
        end = min(q, self.hi)
        m = self.run_.model
        if m[off:end].count(0) != end - off:
            first = next(i for i in range(off, end) if m[i])
            if not any(x <= first < y for x, y, _ in self.unsure):
                raise Failure(f"{how}: SEEK_DATA gave {q}, past data at {first}")
        try:
            q = os.lseek(self.fd, off, os.SEEK_HOLE)
        except OSError as e:
            return self.expect(e, how)
        if q < off or q > self.run_.size:
            raise Failure(f"{how}: SEEK_HOLE gave {q}")

    def final(self):
        """fsync, then read back what a failed change left unknown (the
        rest was checked by every read, and the image is compared with
        the model)"""
        self.busy = ("final fsync", time.monotonic())
        for _ in range(10):
            try:
                os.fsync(self.fd)
                break
            except OSError as e:
                self.expect(e, "final fsync", flush=True)
        while self.unsure:
            off, end = self.unsure[0][:2]
            n = min(MAX_SIZE, end - off)
            how = f"final read [{off}, +{n})"
            self.busy = (how, time.monotonic())
            for _ in range(10):
                try:
                    got = os.pread(self.fd, n, off)
                    break
                except OSError as e:
                    self.expect(e, how)
            else:
                raise Failure(f"{how}: EIO ten times")
            if len(got) != n:
                raise Failure(f"{how}: short read of {len(got)}")
            self.check(off, got, how)

    def run(self):
        try:
            self.fd = os.open(self.run_.path, os.O_RDWR)
            self.dfd = os.open(self.run_.path, os.O_RDWR | os.O_DIRECT)
            ops = BULK_OPS if self.run_.bulk else OPS
            names = [o for o, _ in ops if o != "seek" or self.run_.seek]
            weights = [w for o, w in ops if o != "seek" or self.run_.seek]
            while time.monotonic() < self.run_.end:
                name = self.rng.choices(names, weights)[0]
                self.op(name)
                self.counts[name] = self.counts.get(name, 0) + 1
                self.busy = None
            self.final()
            self.busy = None
        except Failure as f:
            self.failure = f"client {self.index}: {f}"
        except Exception as e:  # noqa: BLE001 (any surprise is a failure)
            self.failure = f"client {self.index}: {type(e).__name__}: {e}"
        self.busy = None


def report(pid):
    """The hang reporter, started before any descriptor of the export is
    open (a child holding one would hang in its close, FUSE's FLUSH): on
    a line from the driver, show the server's threads (kernel stacks, then
    gdb), then end the server (SIGKILL), which fails whatever waits on it"""
    if sys.stdin.readline() != "go\n":
        return
    print(f"--- the kernel stacks of server {pid}:", file=sys.stderr)
    for t in sorted(os.listdir(f"/proc/{pid}/task")):
        try:
            with open(f"/proc/{pid}/task/{t}/stack") as f:
                print(f"task {t}:\n{f.read()}", file=sys.stderr)
        except OSError:
            pass
    print(f"--- the threads of server {pid} (gdb):", file=sys.stderr, flush=True)
    try:
        out = subprocess.run(["gdb", "-batch", "-nx", "-p", str(pid), "-ex",
                              "thread apply all bt"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=90).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        out = f"gdb: {e}\n"
    print(out, file=sys.stderr)
    # then one line a thread, innermost call first, for a short log
    print(f"--- server {pid}'s threads in short:", file=sys.stderr)
    line = None
    for w in out.splitlines() + ["Thread"]:
        if w.startswith("Thread"):
            if line:
                print(" < ".join(line), file=sys.stderr)
            line = [w.split('"')[0].split("(")[0].strip()] if w != "Thread" else None
        elif w.startswith("#") and line is not None:
            f = w.split(" in ")[1].split(" (")[0] if " in " in w else w.split()[1]
            # the innermost call, then the program's own (not libc's)
            if len(line) == 1 or not (f.startswith("_") or f in
                                      ("start_thread", "clone3", "clone")):
                line.append(f)
    sys.stderr.flush()
    os.kill(pid, 9)


def hang_report(run, what):
    print(f"HANG: {what}", file=sys.stderr, flush=True)
    for c in run.clients:
        if c.busy:
            print(f"  client {c.index}: {c.busy[0]} for "
                  f"{time.monotonic() - c.busy[1]:.1f} s", file=sys.stderr)
    if run.reporter:
        run.reporter.stdin.write(b"go\n")
        run.reporter.stdin.flush()
        run.reporter.wait()
    sys.stderr.flush()
    os._exit(2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("init")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--max-size", type=int, default=MAX_SIZE)
    ap.add_argument("--errors", action="store_true")
    ap.add_argument("--flush-errors", action="store_true")
    ap.add_argument("--bulk", action="store_true")
    ap.add_argument("--seek", action="store_true")
    ap.add_argument("--no-direct", action="store_true")
    ap.add_argument("--shared-blocks", action="store_true")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--hang", type=float, default=30)
    ap.add_argument("--model", dest="model_out")
    ap.add_argument("--report", type=int, help=argparse.SUPPRESS)
    run = ap.parse_args()
    if run.report:
        return report(run.report)
    run.reporter = run.pid and subprocess.Popen(
        [sys.executable, __file__, "-", "-", "--report", str(run.pid)],
        stdin=subprocess.PIPE)
    run.path = run.file
    run.direct = not run.no_direct
    print(f"nbdstress: seed {run.seed}", flush=True)
    run.size = os.stat(run.path).st_size
    if run.init == "zeros":
        run.model = bytearray(run.size)
    else:
        with open(run.init, "rb") as f:
            run.model = bytearray(f.read())
        if len(run.model) != run.size:
            sys.exit(f"FAIL: {run.init} has {len(run.model)} bytes, {run.path} {run.size}")
    run.pool = random.Random(run.seed).randbytes(16 << 20)
    run.max_size = min(run.max_size, MAX_SIZE)
    width = run.size // run.threads
    width -= width % 4096
    if run.shared_blocks:
        width -= 1536
    run.clients = [Client(run, i, i * width, (i + 1) * width)
                   for i in range(run.threads)]
    start = time.monotonic()
    run.end = start + run.seconds
    for c in run.clients:
        c.start()
    while any(c.is_alive() for c in run.clients):
        time.sleep(0.2)
        now = time.monotonic()
        for c in run.clients:
            b = c.busy
            if b and now - b[1] > run.hang:
                hang_report(run, f"client {c.index}: {b[0]} for over {run.hang:.0f} s")
        if now > run.end + 3 * run.hang:
            hang_report(run, "the run did not end")
    failures = [c.failure for c in run.clients if c.failure]
    counts = {}
    for c in run.clients:
        for k, v in c.counts.items():
            counts[k] = counts.get(k, 0) + v
    print("nbdstress: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) +
          f", {sum(c.errors for c in run.clients)} errors taken in "
          f"{time.monotonic() - start:.1f} s", flush=True)
    if run.reporter:
        run.reporter.stdin.close()
        run.reporter.wait()
    if failures:
        for f in failures:
            print(f"FAIL: {f}", file=sys.stderr)
        sys.exit(1)
    if run.model_out:
        with open(run.model_out, "wb") as f:
            f.write(run.model)


if __name__ == "__main__":
    main()
