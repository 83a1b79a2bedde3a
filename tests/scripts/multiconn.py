"""Multi-connection coherence: write on one connection, FLUSH on a second, read on a
third (two over the unix socket, one over TCP). CAN_MULTI_CONN promises this holds."""
import os
import random
import sys

import nbd

unix_uri, tcp_uri = sys.argv[1], sys.argv[2]
writer, flusher, reader = nbd.NBD(), nbd.NBD(), nbd.NBD()
writer.connect_uri(unix_uri)
flusher.connect_uri(unix_uri)
reader.connect_uri(tcp_uri)
assert writer.can_multi_conn(), "server must advertise CAN_MULTI_CONN"
size = writer.get_size()
rng = random.Random(1234)
rounds = 64
for i in range(rounds):
    length = rng.choice([512, 4096, 65536, 1 << 20])
    offset = rng.randrange(0, (size - length) // 512) * 512
    data = os.urandom(length)
    writer.pwrite(data, offset)
    flusher.flush()
    got = reader.pread(length, offset)
    assert got == data, f"round {i}: read on a third connection differs at {offset}+{length}"
for h in (writer, flusher, reader):
    h.shutdown()
print(f"coherent: {rounds} rounds")
