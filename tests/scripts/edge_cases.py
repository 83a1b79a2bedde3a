"""NBD edge cases through libnbd with strict mode off, so that malformed requests reach the
server: every answer must be the right NBD error, and the connection must stay usable."""
import errno
import sys

import nbd

EDGE, RO, TCP = sys.argv[1], sys.argv[2], sys.argv[3]
MiB = 1 << 20
failures = []
passed = 0


def check(name, cond, detail=""):
    global passed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failures.append(name)
        print(f"FAIL {name} {detail}")


def expect_errno(name, want, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        check(name, e.errnum == want, f"got errno {e.errnum} ({e.string}), want {want}")
        return
    check(name, False, "succeeded, want an error")


# --- option haggling -------------------------------------------------------------------
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(EDGE)
names = []
h.opt_list(lambda name, desc: names.append((name, desc)) or 0)
check("OPT_LIST names every volume", {"edge", "ro"} <= {n for n, _ in names}, str(names))
check("OPT_LIST carries no descriptions but names", all(isinstance(n, str) for n, _ in names))
contexts = []
h.add_meta_context("base:")
h.opt_list_meta_context(lambda ctx: contexts.append(ctx) or 0)
check("LIST_META_CONTEXT base: finds base:allocation", contexts == ["base:allocation"], str(contexts))
h.set_export_name("no-such-volume")
expect_errno("OPT_INFO of an unknown export fails", errno.ENOENT, h.opt_info)
h.set_export_name("edge")
h.set_full_info(True)
h.opt_info()
check("OPT_INFO size", h.get_size() == 4 * MiB)
check("OPT_INFO block sizes", (h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM)) == (512, 4096, 32 * MiB))
check("OPT_INFO description", "ferry volume edge" in h.get_export_description())
check("OPT_INFO canonical name", h.get_canonical_export_name() == "edge")
h.opt_abort()

# --- transmission ------------------------------------------------------------------------
h = nbd.NBD()
h.set_strict_mode(0)
h.add_meta_context("base:allocation")
h.connect_uri(EDGE)
check("structured replies negotiated", h.get_structured_replies_negotiated())
check("base:allocation negotiated", h.can_meta_context("base:allocation"))
check("CAN_MULTI_CONN", h.can_multi_conn() and h.can_fua() and h.can_trim() and h.can_zero() and h.can_fast_zero() and h.can_cache() and h.can_df())

expect_errno("read past the end -> EINVAL", errno.EINVAL, h.pread, 1024, 4 * MiB - 512)
expect_errno("write past the end -> ENOSPC", errno.ENOSPC, h.pwrite, b"x" * 512, 4 * MiB)
expect_errno("offset overflowing u64 -> EINVAL", errno.EINVAL, h.pread, 512, (1 << 64) - 512)
expect_errno("unaligned read -> EINVAL", errno.EINVAL, h.pread, 512, 1)
expect_errno("unaligned write -> EINVAL", errno.EINVAL, h.pwrite, b"y" * 100, 0)
expect_errno("oversize read -> EOVERFLOW", errno.EOVERFLOW, h.pread, 33 * MiB, 0)
expect_errno("oversize write -> EOVERFLOW", errno.EOVERFLOW, h.pwrite, b"\0" * (33 * MiB), 0)
expect_errno("unknown command flag -> EINVAL", errno.EINVAL, h.pread, 512, 0, flags=0x40)
expect_errno("FUA on a read -> EINVAL", errno.EINVAL, h.pread, 512, 0, flags=nbd.CMD_FLAG_FUA)
check("zero-length read answers", h.pread(0, 0) == b"")
h.pwrite(b"", 0)
check("zero-length write answers", True)
expect_errno("zero-length block status -> EINVAL", errno.EINVAL, h.block_status, 0, 0, lambda *a: 0)

# The connection survived every refusal, oversize payloads included.
h.pwrite(b"\xaa" * 65536, 1 * MiB, flags=nbd.CMD_FLAG_FUA)
check("connection still serves after errors", h.pread(65536, 1 * MiB) == b"\xaa" * 65536)


def extents(handle, length, offset):
    got = []

    def cb(ctx, off, entries, err):
        got.extend(zip(entries[0::2], entries[1::2]))
        return 0

    handle.block_status(length, offset, cb)
    return got


ext = extents(h, 2 * MiB, 0)
check("block status: hole then data", ext[0][1] == 3 and any(f == 0 for _, f in ext), str(ext))
h.trim(65536, 1 * MiB)
check("trim then read gives zeroes", h.pread(65536, 1 * MiB) == b"\0" * 65536)
check("trimmed range is a hole", extents(h, 65536, 1 * MiB)[0][1] & 1 == 1)

h.pwrite(b"\x55" * 131072, 2 * MiB)
h.zero(131072, 2 * MiB, flags=nbd.CMD_FLAG_NO_HOLE)
check("write-zeroes NO_HOLE reads zeroes", h.pread(131072, 2 * MiB) == b"\0" * 131072)
h.pwrite(b"\x56" * 65536, 3 * MiB)
h.zero(65536, 3 * MiB, flags=nbd.CMD_FLAG_FAST_ZERO)
check("write-zeroes FAST_ZERO reads zeroes", h.pread(65536, 3 * MiB) == b"\0" * 65536)
check("write-zeroes may punch a hole", extents(h, 65536, 3 * MiB)[0][1] == 3)
h.cache(65536, 0)
h.flush()
check("cache and flush answer", True)
ext = extents(h, 4 * MiB, 0)
check("extents cover at most the request", sum(l for l, _ in ext) <= 4 * MiB, str(ext))

# Requests in flight when the client disconnects: the server finishes them first.
bufs = []
for i in range(16):
    buf = nbd.Buffer.from_bytearray(bytearray([i + 1]) * 4096)
    bufs.append(buf)
    h.aio_pwrite(buf, i * 4096)
h.shutdown()
h2 = nbd.NBD()
h2.connect_uri(TCP)
data = h2.pread(16 * 4096, 0)
check("writes in flight at DISC were completed", all(data[i * 4096:(i + 1) * 4096] == bytes([i + 1]) * 4096 for i in range(16)))
h2.shutdown()

# --- simple replies only, as the Linux kernel client uses ---------------------------------
s = nbd.NBD()
s.set_strict_mode(0)
s.set_request_structured_replies(False)
s.connect_uri(TCP)
check("simple replies: no structured replies", not s.get_structured_replies_negotiated())
s.pwrite(b"\x5c" * 8192, 0)
check("simple replies: read back", s.pread(8192, 0) == b"\x5c" * 8192)
expect_errno("simple replies: read past the end -> EINVAL", errno.EINVAL, s.pread, 1024, 4 * MiB - 512)
expect_errno("simple replies: oversize read -> EINVAL", errno.EINVAL, s.pread, 33 * MiB, 0)
check("simple replies: still served after errors", s.pread(512, 0) == b"\x5c" * 512)
s.shutdown()

# --- read-only export ----------------------------------------------------------------------
r = nbd.NBD()
r.set_strict_mode(0)
r.connect_uri(RO)
check("read-only export advertised", r.is_read_only())
expect_errno("write to read-only -> EPERM", errno.EPERM, r.pwrite, b"z" * 512, 0)
expect_errno("trim on read-only -> EPERM", errno.EPERM, r.trim, 512, 0)
check("read-only export reads", len(r.pread(4096, 0)) == 4096)
r.shutdown()

print(f"{passed} passed, {len(failures)} failed")
if failures:
    sys.exit(1)
print("edge cases: all passed")
