#!/usr/bin/env python3
# crash.py - what was fsync'ed before the server died is in the source
#
#   crash.py write EXPORT JOURNAL SEED    write until the export fails
#   crash.py verify SOURCE JOURNAL        check every journaled write
#
# The writer puts random 4 KiB..64 KiB blocks, each at its own offset, into
# EXPORT in a seeded random order; after each write and fsync(2) of the
# export return, it records the block's offset, length and seed in JOURNAL
# (an ordinary file, fsync'ed too). Killing the server at any moment must
# leave every journaled block in SOURCE.
#
# SPDX-License-Identifier: GPL-2.0-or-later

import os
import random
import sys

SLOT = 64 * 1024


def block(seed, slot):
    rng = random.Random(seed * 1000003 + slot)
    return rng.randbytes(rng.randrange(4096, SLOT + 1, 4096))


def write(export, journal, seed):
    try:
        fd = os.open(export, os.O_WRONLY)
    except OSError:
        return 0                # killed before we even opened it
    slots = list(range(os.fstat(fd).st_size // SLOT))
    random.Random(seed).shuffle(slots)
    with open(journal, "a") as j:
        for slot in slots:
            data = block(seed, slot)
            try:
                os.pwrite(fd, data, slot * SLOT)
                os.fsync(fd)
            except OSError:
                break           # the server is gone: that is the point
            j.write(f"{slot} {seed}\n")
            j.flush()
            os.fsync(j.fileno())
    return 0


def verify(source, journal):
    fd = os.open(source, os.O_RDONLY)
    checked = 0
    with open(journal) as j:
        for line in j:
            slot, seed = map(int, line.split())
            want = block(seed, slot)
            if os.pread(fd, len(want), slot * SLOT) != want:
                print(f"FAIL: block {slot} (seed {seed}) was fsync'ed but is not in the source")
                return 1
            checked += 1
    print(f"{checked} fsync'ed blocks all in the source")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "write":
        sys.exit(write(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    sys.exit(verify(sys.argv[2], sys.argv[3]))
