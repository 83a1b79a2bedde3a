"""Acknowledged writes survive a crash of the server.

  acked_writes.py write URI SIZE OUT.json
      Writes 4 KiB blocks at random offsets, 32 in flight, until the connection fails (the
      test kills the server; at most 60 s), then records in OUT.json, for every block, the
      newest write the server acknowledged to it.
  acked_writes.py verify URI OUT.json
      Every such block holds that write, or one sent after it (a write in flight at the
      crash may or may not have landed). Exits 1 with the blocks that do not.

Each block written carries (sequence number, block number) in every 16 bytes.
"""
import json
import random
import struct
import sys
import time

import nbd

BS = 4096
DEPTH = 32


def payload(seq, block):
    return struct.pack("<QQ", seq, block) * (BS // 16)


def write(uri, size, out):
    h = nbd.NBD()
    h.connect_uri(uri)
    blocks = size // BS
    rnd = random.Random(20261127)
    pending = {}  # cookie -> (seq, block)
    acked = {}
    seq = 0
    failed = None
    end = time.time() + 60
    while failed is None and time.time() < end:
        try:
            while len(pending) < DEPTH:
                seq += 1
                block = rnd.randrange(blocks)
                buf = nbd.Buffer.from_bytearray(bytearray(payload(seq, block)))
                pending[h.aio_pwrite(buf, block * BS)] = (seq, block)
            h.poll(-1)
            for cookie in list(pending):
                if h.aio_command_completed(cookie):
                    s, b = pending.pop(cookie)
                    acked[b] = max(acked.get(b, 0), s)
        except nbd.Error as e:
            failed = str(e)
    with open(out, "w") as f:
        json.dump({"acked": acked, "sent": seq, "ended": failed or "time"}, f)
    print("%d writes sent, %d blocks acknowledged; ended: %s" % (seq, len(acked), failed or "time"))


def verify(uri, path):
    with open(path) as f:
        acked = {int(b): s for b, s in json.load(f)["acked"].items()}
    h = nbd.NBD()
    h.connect_uri(uri)
    bad = []
    for block, want in sorted(acked.items()):
        data = h.pread(BS, block * BS)
        seq, b = struct.unpack_from("<QQ", data)
        whole = data == payload(seq, b)
        if not whole or b != block or seq < want:
            bad.append("block %d: acknowledged write %d, found %s" % (
                block, want, "write %d to block %d" % (seq, b) if whole else "other bytes"))
    if bad:
        print("%d of %d acknowledged blocks lost:\n%s" % (len(bad), len(acked), "\n".join(bad[:20])))
        sys.exit(1)
    print("all %d acknowledged blocks hold their write or a later one" % len(acked))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        verify(sys.argv[2], sys.argv[3])
