#!/usr/bin/env bash
# Failback benchmark: a volume of SIZE protected A → B and written in full; a live failover
# to B, CHANGE of random 64k writes there (the changed share, 1% by default), commit; then
# reverse protection B → A (A's volume becomes the replica; a delta sync compares 1 MiB
# regions and sends those that differ), against a full copy of the same volume in the same
# run (a new VPG over a copy of it, initial sync to A); then a move back A ← B under a QD1
# writer at B, timed from the request to A protecting in the reverse direction.
# A benchmark, not a test: it asserts nothing.
#
#   SIZE=4G  CHANGE=1  (percent)  BENCH_DIR=/var/tmp/ferry-bench-failback
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-4G}
CHANGE=${CHANGE:-1}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ferry-bench-failback}
for t in fio python3 qemu-img; do
  command -v "$t" >/dev/null || { echo "bench-failback.sh: $t is missing; scripts/test.sh installs it" >&2; exit 1; }
done
cargo build --release --quiet
FERRY=$PWD/target/release/ferry
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR/a" "$BENCH_DIR/b"
. scripts/bench-common.sh
A() { FERRY_CONTROL=$BENCH_DIR/a/control.sock "$FERRY" "$@"; }
B() { FERRY_CONTROL=$BENCH_DIR/b/control.sock "$FERRY" "$@"; }
state() { "$1" vpg show "$2" --json 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['state_kind'])" 2>/dev/null || true; }
acked() { "$1" vpg show "$2" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['protection']['ship']['acked_bytes'])"; }
until_protecting() { for _ in $(seq 6000); do [ "$(state "$1" "$2")" = protecting ] && return 0; sleep 0.1; done; echo "$2 never protecting" >&2; exit 1; }

"$FERRY" pair "$BENCH_DIR/key" --force >/dev/null
for s in a b; do
  port=$([ $s = a ] && echo 10897 || echo 10898)
  printf 'state_dir = "%s"\n[nbd]\nlisten = []\n[replication]\nlisten = "127.0.0.1:%s"\npairing_keys = ["%s"]\n' \
    "$BENCH_DIR/$s" "$port" "$BENCH_DIR/key" >"$BENCH_DIR/$s.toml"
  "$FERRY" agent --config "$BENCH_DIR/$s.toml" --log-level warn 2>>"$BENCH_DIR/$s.log" & pids+=($!)
done
wait_sock "$BENCH_DIR/a/control.sock"; wait_sock "$BENCH_DIR/b/control.sock"
A volume create d0 --size "$SIZE" >/dev/null
fio --name=fill --ioengine=nbd --uri="nbd+unix:///d0?socket=$BENCH_DIR/a/nbd.sock" --rw=write --bs=1M --iodepth=8 \
  --size="$SIZE" --output-format=terse >/dev/null
A vpg create app --volume d0 --journal-size 1G --peer 127.0.0.1:10898 --peer-key "$BENCH_DIR/key" --wait >/dev/null
echo "protected A → B; failing over, writing ${CHANGE}% at B, committing …" >&2
B failover live app --shutdown graceful >/dev/null
bytes=$(numfmt --from=iec "$SIZE")
change=$((bytes * CHANGE / 100))
fio --name=chg --ioengine=nbd --uri="nbd+unix:///d0?socket=$BENCH_DIR/b/nbd.sock" --rw=randwrite --bs=64k \
  --iodepth=8 --size="$SIZE" --io_size="$change" --randrepeat=0 --output-format=terse >/dev/null
B failover commit app >/dev/null

# Reverse protection: a delta sync of the failed-over volume back to A.
t0=$(now)
B vpg reverse app --peer 127.0.0.1:10897 --peer-key "$BENCH_DIR/key" >/dev/null
until_protecting B app
t1=$(now)
rev_s=$(python3 -c "print($t1 - $t0)"); rev_b=$(acked B app)

# The full copy, same run: a copy of the volume protected to A from scratch.
qemu-img convert -f raw -O raw "nbd+unix:///d0?socket=$BENCH_DIR/b/nbd.sock" "$BENCH_DIR/copy.img"
B volume adopt full0 "$BENCH_DIR/copy.img" >/dev/null
t0=$(now)
B vpg create full --volume full0 --journal-size 1G --peer 127.0.0.1:10897 --peer-key "$BENCH_DIR/key" >/dev/null
until_protecting B full
t1=$(now)
full_s=$(python3 -c "print($t1 - $t0)"); full_b=$(acked B full)

# A move back to A under a QD1 writer at B (its writes stop at the fence).
fio --name=load --ioengine=nbd --uri="nbd+unix:///d0?socket=$BENCH_DIR/b/nbd.sock" --rw=randwrite --bs=4k \
  --iodepth=1 --size="$SIZE" --time_based --runtime=3600 --output-format=terse >/dev/null 2>&1 & fpid=$!
sleep 2
t0=$(now)
A failover move app --reverse-protection --peer 127.0.0.1:10898 --peer-key "$BENCH_DIR/key" >/dev/null
until_protecting A app
t1=$(now)
kill "$fpid" 2>/dev/null || true; wait "$fpid" 2>/dev/null || true
move_s=$(python3 -c "print($t1 - $t0)"); move_b=$(acked A app)

python3 - "$SIZE" "$CHANGE" "$bytes" "$rev_s" "$rev_b" "$full_s" "$full_b" "$move_s" "$move_b" <<'PY'
import sys
size, change = sys.argv[1:3]
total = int(sys.argv[3])
rev_s, rev_b, full_s, full_b, move_s, move_b = (float(x) for x in sys.argv[4:10])
mib = lambda b: b / 2**20
print(f"a {size} volume, {change}% of it written at the recovery site after the failover")
print(f"{'':44} {'seconds':>8} {'MiB sent':>10} {'of volume':>10}")
print(f"{'reverse protection (delta sync)':44} {rev_s:>8.1f} {mib(rev_b):>10.1f} {rev_b/total*100:>9.2f}%")
print(f"{'full copy (initial sync of a copy)':44} {full_s:>8.1f} {mib(full_b):>10.1f} {full_b/total*100:>9.2f}%")
print(f"{'ratio reverse / full':44} {rev_s/full_s:>8.2f} {rev_b/max(full_b,1):>10.3f}")
print(f"move back under a QD1 writer, request to protecting in reverse: {move_s:.1f} s, {mib(move_b):.1f} MiB sent")
PY
