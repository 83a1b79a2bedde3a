"""Hostile NBD and replication clients, for the agent's bounds (DESIGN.md invariant 4).

  hostile.py idle HOST:PORT SOURCE COUNT [UNIX_PATH UCOUNT]
      opens COUNT TCP connections from address SOURCE (and UCOUNT on the unix socket) that
      never say a word; prints "holding N" and holds them until stdin closes.
  hostile.py flood HOST:PORT EXPORT CLIENTS WRITES SECONDS
      CLIENTS connections negotiate EXPORT and pipeline up to WRITES writes of 64 KiB each,
      never reading a reply, for at most SECONDS; then each resets its connection (RST).
      Prints "sent N" with the writes sent in all.
"""
import socket
import struct
import sys
import threading
import time


def addr(hp):
    h, p = hp.rsplit(":", 1)
    return h, int(p)


def idle(hp, source, count, upath=None, ucount=0):
    held = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        try:
            s.connect(addr(hp))
        except OSError:
            s.close()
            continue
        held.append(s)
    for _ in range(ucount):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(upath)
        except OSError:
            s.close()
            continue
        held.append(s)
    print(f"holding {len(held)}", flush=True)
    sys.stdin.read()
    for s in held:
        s.close()


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b


def negotiate(s, export):
    head = recv_exact(s, 18)
    assert head[:16] == b"NBDMAGICIHAVEOPT", head
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    name = export.encode()
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 1, len(name)) + name)  # EXPORT_NAME
    recv_exact(s, 10)


def flood_one(hp, export, writes, deadline, counts, i):
    s = socket.create_connection(addr(hp))
    negotiate(s, export)
    s.settimeout(0.2)
    payload = b"\xab" * 65536
    sent = 0
    for n in range(writes):
        req = struct.pack(">IHHQQI", 0x25609513, 0, 1, n, (n % 64) * 65536, 65536) + payload
        view = memoryview(req)
        while view and time.time() < deadline:
            try:
                k = s.send(view)
                view = view[k:]
            except socket.timeout:
                continue
            except OSError:
                view = None
                break
        if view is None or view or time.time() >= deadline:
            break
        sent += 1
    counts[i] = sent
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def flood(hp, export, clients, writes, seconds):
    deadline = time.time() + seconds
    counts = [0] * clients
    ts = [threading.Thread(target=flood_one, args=(hp, export, writes, deadline, counts, i)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(f"sent {sum(counts)}", flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "idle":
        idle(a[1], a[2], int(a[3]), a[4] if len(a) > 4 else None, int(a[5]) if len(a) > 5 else 0)
    elif a[0] == "flood":
        flood(a[1], a[2], int(a[3]), int(a[4]), float(a[5]))
