"""Pipelined requests that make the server guess the next WRITE, and guess wrong.

Phase "one": one connection queues 600 requests without waiting: mostly 4 KiB writes (so
the server reads several at once into guessed journal slots), with reads, writes of other
lengths, trims, write-zeroes and flushes among them (each one a wrong guess). Reads are of
a region no request in the batch writes, filled first, and must return its bytes.

Phase "two": two connections (unix and TCP) queue 4 KiB writes to the same 64 blocks at
once, so a guessed write can find a later overlapping one from the other connection.

Prints "ok PHASE N" with the number of requests sent.
"""
import os
import random
import sys

import nbd

phase, uris = sys.argv[1], sys.argv[2:]
handles = []
for u in uris:
    h = nbd.NBD()
    h.connect_uri(u)
    handles.append(h)
size = handles[0].get_size()
rng = random.Random(4242)
fixed_at = size - (1 << 20)  # read-only region for phase one
sent = 0


def wait_all():
    for h in handles:
        while h.aio_in_flight() > 0:
            h.poll(-1)


def write(h, data, offset):
    global sent
    sent += 1
    return h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), offset)


if phase == "one":
    h = handles[0]
    fixed = os.urandom(1 << 20)
    h.pwrite(fixed, fixed_at)
    reads = []
    for i in range(600):
        off = rng.randrange(0, (fixed_at - 8192) // 512) * 512
        if i % 37 == 5:
            at = fixed_at + rng.randrange(0, 255) * 4096
            buf = nbd.Buffer(4096)
            reads.append((buf, at))
            h.aio_pread(buf, at)
            sent += 1
        elif i % 53 == 7:
            write(h, os.urandom(8192), off)
        elif i % 71 == 9:
            h.aio_trim(4096, off // 4096 * 4096)
            sent += 1
        elif i % 89 == 11:
            h.aio_zero(4096, off)
            sent += 1
        elif i % 97 == 13:
            write(h, os.urandom(512), off)
        elif i % 101 == 17:
            h.aio_flush()
            sent += 1
        else:
            write(h, os.urandom(4096), off // 4096 * 4096)
    wait_all()
    for buf, at in reads:
        got = bytes(buf.to_bytearray())
        assert got == fixed[at - fixed_at : at - fixed_at + 4096], f"read at {at} differs"
elif phase == "two":
    blocks = [rng.randrange(0, 64) * 4096 for _ in range(512)]
    for i, off in enumerate(blocks):
        write(handles[i % len(handles)], os.urandom(4096), off)
        if i % 64 == 63:
            for h in handles:
                h.poll(0)
    wait_all()
for h in handles:
    h.flush()
    h.shutdown()
print(f"ok {phase} {sent}")
