"""A client that holds a volume open across its deletion: writes and flushes once, says
"ready", waits for a line on stdin, then writes and flushes again and prints what each
answered ("ok" or the error)."""
import sys

import nbd

h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\x11" * 4096, 0)
h.flush()
print("ready", flush=True)
sys.stdin.readline()
for name, op in (("write", lambda: h.pwrite(b"\x22" * 4096, 4096)), ("flush", h.flush)):
    try:
        op()
        print(f"{name}: ok", flush=True)
    except nbd.Error as e:
        print(f"{name}: {e.string}", flush=True)
