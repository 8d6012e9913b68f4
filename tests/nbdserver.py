#!/usr/bin/env python3
# nbdserver.py - an awkward NBD server for the stress tests (stdlib only)
#
#   nbdserver.py SOCKET IMAGE [--control FIFO] [--seed N] [--split N]
#                [--delay-ms N] [--workers N] [--min-block N] [--multi-conn]
#                [--no-structured] [--no-df]
#
# Serves IMAGE (a file; its size is the export's) on the unix socket SOCKET,
# fixed newstyle, everything valid by the protocol but nothing convenient:
# several workers per connection take the requests in random order, after
# a random delay of up to --delay-ms, and their replies' chunks interleave;
# a READ's reply is split into up to --split OFFSET_DATA and OFFSET_HOLE
# chunks sent in random order, ending with DONE on the last one or on an
# extra NONE chunk; BLOCK_STATUS answers with a random prefix of the
# extents asked for. With --min-block the server refuses requests not
# aligned to it. With --multi-conn it offers NBD_FLAG_CAN_MULTI_CONN.
#
# Lines written to the --control FIFO make it misbehave on command:
#   stall SECONDS   the next reply stops SECONDS mid-chunk, then goes on
#   close           the next reply is cut mid-chunk and its connection closed
#   error N         the next N requests get EIO, not carried out (a READ's
#                   reply may carry some data chunks before its error chunk)
# A write may be carried out and the connection closed before its reply.
#
# Every request the protocol forbids the client to send (not aligned, past
# the end, too long, flags not offered, commands not negotiated) gets EINVAL
# and a line "VIOLATION: ..." on stderr. SIGTERM ends the server; it prints
# "nbdserver: N requests, ..." (its counts) on stderr at the end.
#
# SPDX-License-Identifier: GPL-2.0-or-later

import argparse
import mmap
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

NBD_MAGIC = 0x4E42444D41474943
OPT_MAGIC = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF

OPT_EXPORT_NAME, OPT_ABORT, OPT_INFO, OPT_GO = 1, 2, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META, OPT_SET_META = 8, 9, 10
REP_ACK, REP_INFO, REP_META = 1, 3, 4
REP_ERR_UNSUP, REP_ERR_INVALID = (1 << 31) | 1, (1 << 31) | 3
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3

F_HAS_FLAGS, F_SEND_FLUSH, F_SEND_FUA = 1, 1 << 2, 1 << 3
F_SEND_TRIM, F_SEND_WRITE_ZEROES, F_SEND_DF = 1 << 5, 1 << 6, 1 << 7
F_CAN_MULTI_CONN = 1 << 8

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_TRIM, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 4, 6, 7
FLAG_FUA, FLAG_NO_HOLE, FLAG_DF, FLAG_REQ_ONE = 1, 2, 4, 8

REPLY_DONE = 1
T_NONE, T_DATA, T_HOLE, T_STATUS = 0, 1, 2, 5
T_ERROR, T_ERROR_OFFSET = (1 << 15) | 1, (1 << 15) | 2
EIO, EINVAL = 5, 22
STATE_HOLE, STATE_ZERO = 1, 2
MAX_PAYLOAD = 32 << 20
META_ID = 7
GRAIN = 65536  # BLOCK_STATUS looks for zeros this much at a time


class Closed(Exception):
    pass


def full(sock, n):
    b = bytearray()
    while len(b) < n:
        d = sock.recv(n - len(b))
        if not d:
            raise Closed()
        b += d
    return bytes(b)


class Server:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.rng_lock = threading.Lock()
        self.fd = os.open(args.image, os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        self.mm = mmap.mmap(self.fd, self.size) if self.size else None
        self.store_lock = threading.Lock()
        self.cmd_lock = threading.Lock()
        self.stall = []  # seconds, one per reply to stall
        self.closes = 0  # replies to cut
        self.errors = 0  # requests to fail
        self.count = dict(requests=0, chunks=0, stalls=0, closes=0, errors=0,
                          violations=0, connections=0)
        self.flags = (F_HAS_FLAGS | F_SEND_FLUSH | F_SEND_FUA | F_SEND_TRIM |
                      F_SEND_WRITE_ZEROES)
        if not args.no_df and not args.no_structured:
            self.flags |= F_SEND_DF
        if args.multi_conn:
            self.flags |= F_CAN_MULTI_CONN

    def random(self, f, *a):
        with self.rng_lock:
            return getattr(self.rng, f)(*a)

    def bump(self, what, n=1):
        with self.cmd_lock:
            self.count[what] += n

    def violation(self, why):
        self.bump("violations")
        print(f"VIOLATION: {why}", file=sys.stderr, flush=True)

    # -- the control FIFO
    def control(self, path):
        fd = os.open(path, os.O_RDWR)  # never sees an end of file
        f = os.fdopen(fd, "r")
        for line in f:
            w = line.split()
            with self.cmd_lock:
                if w[:1] == ["stall"] and len(w) == 2:
                    self.stall.append(float(w[1]))
                elif w == ["close"]:
                    self.closes += 1
                elif w[:1] == ["error"] and len(w) == 2:
                    self.errors += int(w[1])
                else:
                    print(f"nbdserver: unknown control line {line!r}",
                          file=sys.stderr, flush=True)

    def take(self, what):
        """One pending misbehaviour of kind what: its value, or None"""
        with self.cmd_lock:
            if what == "stall" and self.stall:
                return self.stall.pop(0)
            if what == "close" and self.closes:
                self.closes -= 1
                return True
            if what == "error" and self.errors:
                self.errors -= 1
                return True
        return None

    # -- the handshake
    def handshake(self, c):
        """Options until GO: (structured, meta) or None when the client
        leaves"""
        c.sendall(struct.pack(">QQH", NBD_MAGIC, OPT_MAGIC, 1 | 2))
        (cflags,) = struct.unpack(">I", full(c, 4))
        no_zeroes = cflags & 2
        structured = meta = False

        def reply(opt, typ, data=b""):
            c.sendall(struct.pack(">QIII", REP_MAGIC, opt, typ, len(data)) + data)

        while True:
            magic, opt, n = struct.unpack(">QII", full(c, 16))
            if magic != OPT_MAGIC:
                self.violation(f"option magic {magic:#x}")
                return None
            if n > 65536:
                self.violation(f"option {opt} of {n} bytes")
                return None
            data = full(c, n)
            if opt == OPT_STRUCTURED_REPLY and not self.args.no_structured:
                structured = True
                reply(opt, REP_ACK)
            elif opt == OPT_SET_META and structured:
                # export name, then the queries: answer base:allocation
                (nl,) = struct.unpack(">I", data[:4])
                (nq,) = struct.unpack(">I", data[4 + nl:8 + nl])
                p = 8 + nl
                for _ in range(nq):
                    (ql,) = struct.unpack(">I", data[p:p + 4])
                    q = data[p + 4:p + 4 + ql]
                    p += 4 + ql
                    if q == b"base:allocation":
                        meta = True
                        reply(opt, REP_META, struct.pack(">I", META_ID) + q)
                reply(opt, REP_ACK)
            elif opt in (OPT_GO, OPT_INFO):
                reply(opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, self.size,
                                                 self.flags))
                mb = self.args.min_block
                reply(opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, mb,
                                                 max(mb, 4096), MAX_PAYLOAD))
                reply(opt, REP_ACK)
                if opt == OPT_GO:
                    return structured, meta
            elif opt == OPT_EXPORT_NAME:
                c.sendall(struct.pack(">QH", self.size, self.flags) +
                          (b"" if no_zeroes else bytes(124)))
                return False, False
            elif opt == OPT_ABORT:
                reply(opt, REP_ACK)
                return None
            else:
                reply(opt, REP_ERR_UNSUP)

    # -- a connection
    def serve(self, c):
        self.bump("connections")
        try:
            got = self.handshake(c)
        except (Closed, OSError):
            got = None
        if got is None:
            c.close()
            return
        conn = Conn(self, c, *got)
        conn.run()


class Conn:
    def __init__(self, server, sock, structured, meta):
        self.s = server
        self.sock = sock
        self.structured = structured
        self.meta = meta
        self.send_lock = threading.Lock()
        self.cv = threading.Condition()
        self.pending = []
        self.reading = True
        self.dead = False

    def run(self):
        workers = [threading.Thread(target=self.worker, daemon=True)
                   for _ in range(self.s.args.workers)]
        for w in workers:
            w.start()
        try:
            while True:
                req = self.read_request()
                if req is None:
                    break
                with self.cv:
                    self.pending.append(req)
                    self.cv.notify()
        except (Closed, OSError):
            pass
        with self.cv:
            self.reading = False
            self.cv.notify_all()
        for w in workers:
            w.join()
        try:
            self.sock.close()
        except OSError:
            pass

    def read_request(self):
        magic, flags, typ, cookie, off, n = struct.unpack(">IHHQQI",
                                                          full(self.sock, 28))
        if magic != REQUEST_MAGIC:
            self.s.violation(f"request magic {magic:#x}")
            raise Closed()
        if typ == CMD_DISC:
            return None
        data = full(self.sock, n) if typ == CMD_WRITE else None
        self.s.bump("requests")
        return (flags, typ, cookie, off, n, data)

    def worker(self):
        while True:
            with self.cv:
                while not self.pending and self.reading and not self.dead:
                    self.cv.wait()
                if self.dead or not self.pending:
                    return
                req = self.pending.pop(self.s.random("randrange", len(self.pending)))
            ms = self.s.args.delay_ms
            if ms:
                time.sleep(self.s.random("uniform", 0, ms) / 1000)
            try:
                self.handle(*req)
            except (Closed, OSError):
                self.kill()
                return

    def kill(self):
        with self.cv:
            self.dead = True
            self.cv.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- sending: one chunk at a time, so that the chunks of different
    # replies interleave; a stall or a cut happens inside a chunk
    def send(self, head, payload=b""):
        msg = head + payload
        with self.send_lock:
            if self.dead:
                raise Closed()
            if self.s.take("close"):
                self.s.bump("closes")
                self.sock.sendall(msg[:max(1, len(msg) // 2)])
                raise Closed()
            t = self.s.take("stall")
            if t is not None:
                self.s.bump("stalls")
                self.sock.sendall(msg[:max(1, len(msg) // 2)])
                time.sleep(t)
                self.sock.sendall(msg[max(1, len(msg) // 2):])
            else:
                self.sock.sendall(msg)
            self.s.bump("chunks")

    def simple(self, cookie, error, data=b""):
        self.send(struct.pack(">IIQ", SIMPLE_MAGIC, error, cookie), data)

    def chunk(self, cookie, flags, typ, payload):
        self.send(struct.pack(">IHHQI", STRUCTURED_MAGIC, flags, typ, cookie,
                              len(payload)), payload)

    def error(self, cookie, error, msg=b"injected", offset=None, read=False):
        """An error reply: a simple one (never to a READ once structured
        replies are on), or an error chunk"""
        if not self.structured or (not read and self.s.random("random") < 0.3):
            self.simple(cookie, error)
        elif offset is None:
            self.chunk(cookie, REPLY_DONE, T_ERROR,
                       struct.pack(">IH", error, len(msg)) + msg)
        else:
            self.chunk(cookie, REPLY_DONE, T_ERROR_OFFSET,
                       struct.pack(">IH", error, len(msg)) + msg +
                       struct.pack(">Q", offset))

    def done(self, cookie):
        """The reply to a command without data: simple, or a NONE chunk"""
        if self.structured and self.s.random("random") < 0.5:
            self.chunk(cookie, REPLY_DONE, T_NONE, b"")
        else:
            self.simple(cookie, 0)

    def check(self, flags, typ, off, n):
        """Why the request is one the client may not send, or None"""
        s, mb = self.s, self.s.args.min_block
        known = {CMD_READ: FLAG_DF, CMD_WRITE: FLAG_FUA, CMD_FLUSH: 0,
                 CMD_TRIM: FLAG_FUA, CMD_WRITE_ZEROES: FLAG_FUA | FLAG_NO_HOLE,
                 CMD_BLOCK_STATUS: FLAG_REQ_ONE}
        if typ not in known:
            return f"unknown command {typ}"
        if flags & ~known[typ]:
            return f"command {typ} with flags {flags:#x}"
        if flags & FLAG_DF and not s.flags & F_SEND_DF:
            return "DF not offered"
        if typ == CMD_BLOCK_STATUS and not self.meta:
            return "BLOCK_STATUS without base:allocation"
        if typ == CMD_FLUSH:
            return f"FLUSH with offset {off}, length {n}" if off or n else None
        if off + n > s.size:
            return f"command {typ} at {off} + {n} past the end {s.size}"
        if typ in (CMD_READ, CMD_WRITE) and n > MAX_PAYLOAD:
            return f"command {typ} of {n} bytes"
        if n == 0 and typ != CMD_WRITE_ZEROES:
            return f"command {typ} of 0 bytes"
        if typ != CMD_BLOCK_STATUS and (off % mb or (n % mb and off + n != s.size)):
            return f"command {typ} at {off} + {n} not aligned to {mb}"
        return None

    def handle(self, flags, typ, cookie, off, n, data):
        s = self.s
        why = self.check(flags, typ, off, n)
        if why:
            s.violation(why)
            return self.error(cookie, EINVAL, b"not allowed", read=typ == CMD_READ)
        if s.take("error"):
            s.bump("errors")
            if typ == CMD_READ and self.structured and not flags & FLAG_DF:
                return self.read(cookie, off, n, flags, fail=True)
            return self.error(cookie, EIO, offset=off if typ == CMD_READ else None,
                              read=typ == CMD_READ)
        if typ == CMD_READ:
            return self.read(cookie, off, n, flags)
        if typ == CMD_WRITE:
            with s.store_lock:
                s.mm[off:off + n] = data
        elif typ in (CMD_TRIM, CMD_WRITE_ZEROES):
            with s.store_lock:
                s.mm[off:off + n] = bytes(n)
        elif typ == CMD_FLUSH:
            s.mm.flush()
        elif typ == CMD_BLOCK_STATUS:
            return self.status(cookie, off, n, flags & FLAG_REQ_ONE)
        if flags & FLAG_FUA:
            s.mm.flush()
        self.done(cookie)

    def read(self, cookie, off, n, flags, fail=False):
        with self.s.store_lock:
            data = bytes(self.s.mm[off:off + n])
        if not self.structured:
            return self.simple(cookie, 0, data)
        if flags & FLAG_DF:
            pieces = [(0, n)]
        else:
            k = self.s.random("randint", 1, max(1, min(self.s.args.split, n)))
            cuts = sorted(self.s.random("sample", range(1, n), k - 1)) if k > 1 else []
            edges = [0] + cuts + [n]
            pieces = [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
            self.s.random("shuffle", pieces)
        if fail:  # some of the data, then the error
            pieces = pieces[:self.s.random("randrange", len(pieces))]
        last_done = not fail and self.s.random("random") < 0.5
        for i, (a, b) in enumerate(pieces):
            fl = REPLY_DONE if last_done and i == len(pieces) - 1 else 0
            if not flags & FLAG_DF and data[a:b].count(0) == b - a and \
                    self.s.random("random") < 0.7:
                self.chunk(cookie, fl, T_HOLE, struct.pack(">QI", off + a, b - a))
            else:
                self.chunk(cookie, fl, T_DATA, struct.pack(">Q", off + a) + data[a:b])
        if fail:
            self.error(cookie, EIO, offset=off, read=True)
        elif not last_done:
            self.chunk(cookie, REPLY_DONE, T_NONE, b"")

    def status(self, cookie, off, n, one):
        """Extents of GRAIN-aligned zero and data stretches, as many as
        a random prefix of the range holds (at least one)"""
        end = off + n
        if self.s.random("random") < 0.5:
            end = off + self.s.random("randint", 1, n)
        ext = []
        p = off
        with self.s.store_lock:
            while p < end:
                q = min(end, (p // GRAIN + 1) * GRAIN)
                zero = self.s.mm[p:q].count(0) == q - p
                st = STATE_HOLE | STATE_ZERO if zero else 0
                if ext and ext[-1][1] == st:
                    ext[-1][0] += q - p
                else:
                    ext.append([q - p, st])
                p = q
        payload = struct.pack(">I", META_ID) + b"".join(
            struct.pack(">II", ln, st) for ln, st in ext[:1 if one else 64])
        self.chunk(cookie, REPLY_DONE, T_STATUS, payload)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("image")
    ap.add_argument("--control")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--split", type=int, default=16)
    ap.add_argument("--delay-ms", type=float, default=2)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--min-block", type=int, default=1)
    ap.add_argument("--multi-conn", action="store_true")
    ap.add_argument("--no-structured", action="store_true")
    ap.add_argument("--no-df", action="store_true")
    args = ap.parse_args()
    srv = Server(args)

    def stop(*_):
        c = srv.count
        print("nbdserver: " + ", ".join(f"{v} {k}" for k, v in c.items()),
              file=sys.stderr, flush=True)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    if args.control:
        threading.Thread(target=srv.control, args=(args.control,), daemon=True).start()
    ls = socket.socket(socket.AF_UNIX)
    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    ls.bind(args.socket + ".new")  # appears only once it listens
    ls.listen(64)
    os.rename(args.socket + ".new", args.socket)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=srv.serve, args=(c,), daemon=True).start()


if __name__ == "__main__":
    main()
