#!/usr/bin/env bash
# The headline figures for replication on: CPU time per write of the serving processes
# (the protected agent A and the recovery agent B, user + system, from /proc) and write
# latency at queue depth 1, for 4k random overwrites of a volume replicated between two
# local agents (loopback), each of the given ferry binaries in turn, round after round.
#
#   scripts/bench-cpu-per-write.sh [NAME=BINARY ...]   (default: this tree's release build)
#   RUNTIME=15  SIZE=256M  REPEAT=2  BENCH_DIR=/var/tmp/ferry-bench-cpu
#   RW=randwrite  BS=4k  QD=1   the measured workload (RW=write BS=1M QD=32: the recovery
#                               agent's CPU per MiB, what one of its cores takes in)
#
# A benchmark, not a test: it asserts nothing. The volume is written whole first, so the
# measured writes are steady-state overwrites.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${RUNTIME:-15}
SIZE=${SIZE:-256M}
REPEAT=${REPEAT:-2}
RW=${RW:-randwrite}
BS=${BS:-4k}
QD=${QD:-1}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ferry-bench-cpu}
if [ $# -eq 0 ]; then
  cargo build --release --quiet
  set -- "this=$PWD/target/release/ferry"
fi
. scripts/bench-common.sh
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() { # NAME BINARY -> prints "name cpuA_us cpuB_us lat_us iops"
  local name=$1 ferry=$2
  rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR/a" "$BENCH_DIR/b"
  truncate -s "$SIZE" "$BENCH_DIR/src.img"
  "$ferry" pair "$BENCH_DIR/key" --force >/dev/null
  printf 'state_dir = "%s"\n[nbd]\nlisten = []\n' "$BENCH_DIR/a" >"$BENCH_DIR/a.toml"
  printf 'state_dir = "%s"\n[nbd]\nlisten = []\n[replication]\nlisten = "127.0.0.1:10897"\npairing_keys = ["%s"]\n' \
    "$BENCH_DIR/b" "$BENCH_DIR/key" >"$BENCH_DIR/b.toml"
  "$ferry" agent --config "$BENCH_DIR/a.toml" --log-level warn 2>>"$BENCH_DIR/a.log" & local a=$!; pids+=($a)
  "$ferry" agent --config "$BENCH_DIR/b.toml" --log-level warn 2>>"$BENCH_DIR/b.log" & local b=$!; pids+=($b)
  wait_sock "$BENCH_DIR/a/control.sock"; wait_sock "$BENCH_DIR/b/control.sock"
  local A=(env FERRY_CONTROL="$BENCH_DIR/a/control.sock" "$ferry")
  "${A[@]}" volume adopt bench "$BENCH_DIR/src.img" >/dev/null
  "${A[@]}" vpg create bench --volume bench --journal-size 512M --peer 127.0.0.1:10897 \
    --peer-key "$BENCH_DIR/key" --wait >/dev/null
  local uri="nbd+unix:///bench?socket=$BENCH_DIR/a/nbd.sock"
  fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size="$SIZE" \
    --output-format=terse >/dev/null
  sleep 3 # the fill reaches the recovery site
  local a0 b0; a0=$(ticks "$a"); b0=$(ticks "$b")
  fio --name=measured --ioengine=nbd --uri="$uri" --rw="$RW" --bs="$BS" --iodepth="$QD" --size="$SIZE" \
    --time_based --runtime="$RUNTIME" --randrepeat=0 --output-format=json >"$BENCH_DIR/fio.json"
  # What was written is shipped and applied: its cost counts.
  for _ in $(seq 1200); do "${A[@]}" status | grep -q 'RPO 0.0 s' && break; sleep 0.1; done
  sleep 1
  local a1 b1; a1=$(ticks "$a"); b1=$(ticks "$b")
  python3 - "$BENCH_DIR/fio.json" "$name" "$((a1 - a0))" "$((b1 - b0))" "$hz" <<'PY'
import json, sys
text = open(sys.argv[1]).read()  # fio may print notes before its JSON
j = json.loads(text[text.index("{"):])["jobs"][0]["write"]
name, da, db, hz = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
n = j["total_ios"]
print(f"{name} {da / hz * 1e6 / n:.1f} {db / hz * 1e6 / n:.1f} {j['clat_ns']['mean'] / 1000:.1f} {j['iops']:.0f}")
PY
  for p in "$a" "$b"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  pids=()
}

results=$(mktemp)
for round in $(seq "$REPEAT"); do
  for nb in "$@"; do
    echo "round $round: ${nb%%=*}" >&2
    run "${nb%%=*}" "${nb#*=}" >>"$results"
  done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, *v = line.split()
    rows.setdefault(name, []).append([float(x) for x in v])
first = None
print(f"{'build':<10} {'A CPU µs/write':>15} {'B CPU µs/write':>15} {'latency µs':>15} {'IOPS':>8}   (medians)")
for name, rs in rows.items():
    med = [statistics.median(c) for c in zip(*rs)]
    first = first or med
    ratio = "" if med is first else "   vs first: " + " ".join(f"{m / f:.2f}x" for m, f in zip(med, first))
    print(f"{name:<10} {med[0]:>15.1f} {med[1]:>15.1f} {med[2]:>15.1f} {med[3]:>8.0f}{ratio}")
PY
rm -f "$results"
