#!/usr/bin/env python3
"""snapcrash.py - a snapshot whose FILE loses power, and what it shows after

test.sh's crash test of the snapshot FILE drives this in rounds. A model
says what the snapshot may show: BASE, a file with the snapshot's bytes as
of the last flush that completed (fsync returned 0), and LOG, the writes
issued since (offset, length, seed: the bytes are random.Random(seed)'s).
After a crash and a resume, every 512-byte sector must hold its BASE bytes
or the bytes of a write in LOG that covered it: a disk's promise, where a
flushed write stays and an unflushed one may or may not. A sector that
holds anything else (zeros from a copied-up block whose data was lost, say)
is a failure.

    snapcrash.py check SNAP BASE LOG AREAS
        compare the resumed snapshot with the model over AREAS (start:len,
        comma-separated), then make what it shows the new BASE
    snapcrash.py run SNAP BASE LOG AREAS CONTROL FILE MODE SEED
        write and flush in generations, then crash the export below FILE
        (the snapshot's FILE) through its CONTROL FIFO. MODE: between (the
        crash after unflushed writes whose pages were pushed out, as
        write-back may do at any time), during (the crash sent while a
        flush runs: after the server wrote FILE's map, as STRACE_LOG, the
        output of an strace that delays its fdatasyncs, shows)
"""
import ctypes
import os
import random
import re
import sys
import threading
import time

SECTOR = 512


def data_of(seed, length):
    return random.Random(seed).randbytes(length)


def areas_of(text):
    return [tuple(int(x) for x in a.split(":")) for a in text.split(",")]


def read_log(path):
    writes = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                off, length, seed = (int(x) for x in line.split())
                writes.append((off, length, seed))
    return writes


def pread_all(fd, length, off):
    out = bytearray()
    while len(out) < length:
        b = os.pread(fd, min(1 << 20, length - len(out)), off + len(out))
        if not b:
            break
        out += b
    return bytes(out)


def check(snap, base, log, areas):
    writes = read_log(log)
    s = os.open(snap, os.O_RDONLY)
    b = os.open(base, os.O_RDWR)
    bad = []
    later = 0
    for start, length in areas:
        got = pread_all(s, length, start)
        want = pread_all(b, length, start)
        if len(got) != length:
            sys.exit("short read of the snapshot at %d" % start)
        for i in range(0, length, SECTOR):
            g = got[i:i + SECTOR]
            if g == want[i:i + SECTOR]:
                continue
            pos = start + i
            ok = False
            for off, n, seed in writes:
                if off <= pos < off + n and \
                        data_of(seed, n)[pos - off:pos - off + SECTOR] == g:
                    ok = True
                    break
            if ok:
                later += 1
            else:
                bad.append((pos, g == bytes(SECTOR)))
        os.pwrite(b, got, start)
    os.close(s)
    os.close(b)
    if bad:
        sys.exit("%d sectors hold bytes no flush left there and no write "
                 "since put there (%d of them zeros), first at %s"
                 % (len(bad), sum(z for _, z in bad),
                    ", ".join(str(p) for p, _ in bad[:8])))
    open(log, "w").close()
    print("%d sectors from writes after the last flush" % later)


class Model:
    """BASE and LOG, kept as the client writes and flushes"""

    def __init__(self, base, log, areas, seed):
        self.base = os.open(base, os.O_RDWR)
        self.log = open(log, "a")
        self.areas = areas
        self.rng = random.Random(seed)
        self.pending = read_log(log)

    def write(self, fd):
        start, length = self.rng.choice(self.areas)
        n = SECTOR * self.rng.randint(1, 24)
        off = start + SECTOR * self.rng.randrange((length - n) // SECTOR)
        seed = self.rng.getrandbits(48)
        self.log.write("%d %d %d\n" % (off, n, seed))
        self.log.flush()
        self.pending.append((off, n, seed))
        os.pwrite(fd, data_of(seed, n), off)

    def flushed(self):
        """an fsync returned 0: every write so far is in BASE"""
        for off, n, seed in self.pending:
            os.pwrite(self.base, data_of(seed, n), off)
        self.pending = []
        self.log.truncate(0)
        self.log.seek(0)


def writeback(path):
    """push the dirty pages of FILE out, without a flush, as write-back
    may at any moment (SYNC_FILE_RANGE_WRITE)"""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0),
                         ctypes.c_uint(2))
    os.close(fd)


def crash(control, path, command):
    with open(control, "w") as f:
        f.write(command + "\n")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = ctypes.create_string_buffer(4096)
    for _ in range(100):
        try:
            os.preadv(fd, [memoryview(buf)], 0)
        except OSError:
            os.close(fd)
            return
        time.sleep(0.1)
    sys.exit("the export below FILE still reads after the crash")


def generation(m, fd, writes):
    for _ in range(writes):
        m.write(fd)


def run(snap, base, log, areas, control, file, mode, seed):
    m = Model(base, log, areas, seed)
    fd = os.open(snap, os.O_RDWR)
    command = "crash torn" if seed % 2 else "crash"
    command = os.environ.get("CRASH", command)
    for _ in range(3):
        generation(m, fd, 12)
        os.fsync(fd)
        m.flushed()
    if mode == "between":
        generation(m, fd, 12)
        writeback(file)
        crash(control, file, command)
    else:
        done = threading.Event()

        def flusher():
            try:
                while not done.is_set():
                    generation(m, fd, 12)
                    os.fsync(fd)
                    m.flushed()
            except OSError:
                pass
        trace = os.environ["STRACE_LOG"]
        since = os.path.getsize(trace)
        t = threading.Thread(target=flusher)
        t.start()
        wait_map_written(trace, since)
        crash(control, file, command)
        done.set()
        t.join()
    print("%s: %d writes since the last flush" % (command, len(m.pending)))


def wait_map_written(trace, since):
    """until strace's output past since shows the server writing FILE's
    map (the pieces at 4096, 8192, 12288: the data lies past them). The
    server's next call is the fdatasync that makes it durable, which strace
    holds back: the crash lands while the map is written, not flushed."""
    written = re.compile(r"pwrite64\(.*, (4096|8192|12288)\) = [0-9]+$")
    for _ in range(600):
        with open(trace) as f:
            f.seek(since)
            if any(written.search(line) for line in f.read().splitlines()):
                return
        time.sleep(0.02)
    sys.exit("strace never showed the map written before a flush")


def main(argv):
    if len(argv) == 6 and argv[1] == "check":
        check(argv[2], argv[3], argv[4], areas_of(argv[5]))
    elif len(argv) == 10 and argv[1] == "run":
        run(argv[2], argv[3], argv[4], areas_of(argv[5]), argv[6], argv[7],
            argv[8], int(argv[9]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
