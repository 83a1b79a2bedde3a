#!/usr/bin/env bash
# Failback benchmark: two volumes of SIZE protected A → B (VPGs app0, app1), written in
# full; a live failover of both to B with shutdown none, so that CHANGE% of each volume is
# written at each site after the failover (random 64k writes: A's reach B's history, B's
# its overlay); commit. Then, in the same run:
#   - reverse protection of app0 right after its commit: both sites know which regions
#     they changed since the failover, and only those are compared and sent;
#   - reverse protection of app1 after a restart of B (which forgets that): a checksum
#     delta sync of every 64 KiB region;
#   - a full copy: a copy of app0's volume protected to A from scratch;
#   - a move back A ← B under a QD1 writer at B, from the request to A protecting in the
#     reverse direction.
# A benchmark, not a test: it asserts nothing.
#
#   SIZE=4G  CHANGE=1  (percent, each side)  BENCH_DIR=/var/tmp/ferry-bench-failback
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
start_site() {
  local s=$1 port
  port=$([ "$s" = a ] && echo 10897 || echo 10898)
  printf 'state_dir = "%s"\n[nbd]\nlisten = []\n[replication]\nlisten = "127.0.0.1:%s"\npairing_keys = ["%s"]\n' \
    "$BENCH_DIR/$s" "$port" "$BENCH_DIR/key" >"$BENCH_DIR/$s.toml"
  rm -f "$BENCH_DIR/$s/control.sock"
  "$FERRY" agent --config "$BENCH_DIR/$s.toml" --log-level warn 2>>"$BENCH_DIR/$s.log" & pids+=($!)
  [ "$s" = b ] && bpid=$!
  wait_sock "$BENCH_DIR/$s/control.sock"
}
start_site a; start_site b
bytes=$(numfmt --from=iec "$SIZE")
change=$((bytes * CHANGE / 100))
randwrite() { # SITE VOLUME: CHANGE% of random 64k writes
  fio --name=chg --ioengine=nbd --uri="nbd+unix:///$2?socket=$BENCH_DIR/$1/nbd.sock" --rw=randwrite --bs=64k \
    --iodepth=8 --size="$SIZE" --io_size="$change" --randrepeat=0 --output-format=terse >/dev/null
}
for i in 0 1; do
  A volume create "d$i" --size "$SIZE" >/dev/null
  fio --name=fill --ioengine=nbd --uri="nbd+unix:///d$i?socket=$BENCH_DIR/a/nbd.sock" --rw=write --bs=1M \
    --iodepth=8 --size="$SIZE" --output-format=terse >/dev/null
  A vpg create "app$i" --volume "d$i" --journal-size 1G --peer 127.0.0.1:10898 --peer-key "$BENCH_DIR/key" \
    --wait >/dev/null
done
echo "protected A → B; failing over (shutdown none), writing ${CHANGE}% at each site, committing …" >&2
for i in 0 1; do
  B failover live "app$i" --shutdown none >/dev/null
  randwrite a "d$i"; randwrite b "d$i"
  # A's writes reach B's history before the commit fences A.
  sleep 2
  B failover commit "app$i" >/dev/null
done

reverse() { # VPG: seconds and bytes sent until it protects B → A
  local t0 t1
  t0=$(now)
  B vpg reverse "$1" --peer 127.0.0.1:10897 --peer-key "$BENCH_DIR/key" >/dev/null
  until_protecting B "$1"
  t1=$(now)
  echo "$(python3 -c "print($t1 - $t0)") $(acked B "$1")"
}
read -r rev_s rev_b < <(reverse app0)
# B forgets what it changed since the failover: app1's reverse compares checksums.
kill "$bpid"; wait "$bpid" 2>/dev/null || true
start_site b
read -r sum_s sum_b < <(reverse app1)

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
A failover move app0 --reverse-protection --peer 127.0.0.1:10898 --peer-key "$BENCH_DIR/key" >/dev/null
until_protecting A app0
t1=$(now)
kill "$fpid" 2>/dev/null || true; wait "$fpid" 2>/dev/null || true
move_s=$(python3 -c "print($t1 - $t0)"); move_b=$(acked A app0)

python3 - "$SIZE" "$CHANGE" "$bytes" "$rev_s" "$rev_b" "$sum_s" "$sum_b" "$full_s" "$full_b" "$move_s" "$move_b" <<'PY'
import sys
size, change = sys.argv[1:3]
total = int(sys.argv[3])
rev_s, rev_b, sum_s, sum_b, full_s, full_b, move_s, move_b = (float(x) for x in sys.argv[4:12])
mib = lambda b: b / 2**20
print(f"a {size} volume, {change}% of it written at each site after the failover")
print(f"{'':48} {'seconds':>8} {'MiB sent':>10} {'of volume':>10}")
for what, s, b in [
    ("reverse protection, changed regions known", rev_s, rev_b),
    ("reverse protection, checksum delta sync", sum_s, sum_b),
    ("full copy (initial sync of a copy)", full_s, full_b),
]:
    print(f"{what:48} {s:>8.1f} {mib(b):>10.1f} {b/total*100:>9.2f}%")
print(f"{'ratio known / checksum':48} {rev_s/sum_s:>8.3f} {rev_b/max(sum_b,1):>10.3f}")
print(f"{'ratio known / full copy':48} {rev_s/full_s:>8.3f} {rev_b/max(full_b,1):>10.3f}")
print(f"move back under a QD1 writer, request to protecting in reverse: {move_s:.1f} s, {mib(move_b):.1f} MiB sent")
PY
