#!/usr/bin/env bash
# Failover benchmark, the failover-test part: a VPG of VOLUMES volumes of SIZE each,
# replicated between two local agents, with HISTORY bytes of random 64k writes in the
# recovery site's history; then, ROUNDS times, `ferry failover test` at the newest
# checkpoint, timed until every test export answers NBD (nbdinfo), and the same for a
# read-only checkpoint export as the baseline; then a 4k random-read pass over one test
# export with fio against the same pass over the checkpoint export (the overlay's cost on
# reads). A benchmark, not a test: it asserts nothing.
#
#   VOLUMES=4  SIZE=4G  HISTORY=2G  ROUNDS=5  BENCH_DIR=/var/tmp/ferry-bench-failover
set -euo pipefail
cd "$(dirname "$0")/.."
VOLUMES=${VOLUMES:-4}
SIZE=${SIZE:-4G}
HISTORY=${HISTORY:-2G}
ROUNDS=${ROUNDS:-5}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ferry-bench-failover}
for t in fio nbdinfo python3; do
  command -v "$t" >/dev/null || { echo "bench-failover.sh: $t is missing; scripts/test.sh installs it" >&2; exit 1; }
done
cargo build --release --quiet
FERRY=$PWD/target/release/ferry
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR/a" "$BENCH_DIR/b"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT
wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
A() { FERRY_CONTROL=$BENCH_DIR/a/control.sock "$FERRY" "$@"; }
B() { FERRY_CONTROL=$BENCH_DIR/b/control.sock "$FERRY" "$@"; }
now() { date +%s.%N; }

"$FERRY" pair "$BENCH_DIR/key" --force >/dev/null
printf 'state_dir = "%s"\n[nbd]\nlisten = []\n' "$BENCH_DIR/a" >"$BENCH_DIR/a.toml"
printf 'state_dir = "%s"\n[nbd]\nlisten = []\n[replication]\nlisten = "127.0.0.1:10896"\npairing_keys = ["%s"]\n' \
  "$BENCH_DIR/b" "$BENCH_DIR/key" >"$BENCH_DIR/b.toml"
"$FERRY" agent --config "$BENCH_DIR/a.toml" --log-level warn 2>>"$BENCH_DIR/a.log" & pids+=($!)
"$FERRY" agent --config "$BENCH_DIR/b.toml" --log-level warn 2>>"$BENCH_DIR/b.log" & pids+=($!)
wait_sock "$BENCH_DIR/a/control.sock"; wait_sock "$BENCH_DIR/b/control.sock"
vols=()
for i in $(seq 0 $((VOLUMES - 1))); do
  A volume create "d$i" --size "$SIZE" >/dev/null
  vols+=(--volume "d$i")
done
A vpg create bench "${vols[@]}" --journal-size 1G --peer 127.0.0.1:10896 --peer-key "$BENCH_DIR/key" \
  --history 24h --wait >/dev/null
echo "writing $HISTORY of 64k random writes over $VOLUMES volumes of $SIZE into history …" >&2
per=$(python3 -c "import sys; print(int(sys.argv[1]))" "$(( $(numfmt --from=iec "$HISTORY") / VOLUMES ))")
for i in $(seq 0 $((VOLUMES - 1))); do
  fio --name=h$i --ioengine=nbd --uri="nbd+unix:///d$i?socket=$BENCH_DIR/a/nbd.sock" --rw=randwrite \
    --bs=64k --iodepth=8 --size="$SIZE" --io_size="$per" --output-format=terse >/dev/null
done
# (refused while the journal, full, has turned to dirty tracking: until it drained)
for _ in $(seq 1200); do A checkpoint tag bench loaded >/dev/null 2>&1 && break; sleep 0.5; done
for _ in $(seq 600); do B checkpoint list bench 2>/dev/null | grep -q loaded && break; sleep 0.5; done
B replica show bench | grep -E 'history|durable' | head -3 >&2

answer_all() { # URIs… : waits until each answers NBD
  for u in "$@"; do
    until nbdinfo --size "$u" >/dev/null 2>&1; do sleep 0.005; done
  done
}
uris_of() { sed -n 's/^  [^:]*: \(nbd[^ ]*\)$/\1/p'; }

test_ms=() view_ms=()
for r in $(seq "$ROUNDS"); do
  t0=$(now)
  mapfile -t uris < <(B failover test bench --checkpoint loaded | uris_of)
  answer_all "${uris[@]}"
  t1=$(now)
  test_ms+=("$(python3 -c "print(($t1 - $t0) * 1000)")")
  if [ "$r" -eq "$ROUNDS" ]; then
    test_uri=${uris[0]}
  else
    B failover stop bench --result pass >/dev/null
  fi
  t0=$(now)
  mapfile -t curis < <(B checkpoint export bench --checkpoint loaded | uris_of)
  answer_all "${curis[@]}"
  t1=$(now)
  view_ms+=("$(python3 -c "print(($t1 - $t0) * 1000)")")
  [ "$r" -eq "$ROUNDS" ] || B checkpoint unexport bench >/dev/null
done
view_uri=${curis[0]}

read_iops() { # URI -> IOPS of 10 s of 4k random reads at QD8
  fio --name=r --ioengine=nbd --uri="$1" --rw=randread --bs=4k --iodepth=8 --size="$SIZE" --time_based \
    --runtime=10 --output-format=json | python3 -c "import json,sys; t=sys.stdin.read(); print(round(json.loads(t[t.index('{'):])['jobs'][0]['read']['iops']))"
}
# Some writes in the test's scratch first, so reads cross both layers.
fio --name=w --ioengine=nbd --uri="$test_uri" --rw=randwrite --bs=64k --iodepth=8 --size="$SIZE" \
  --io_size=256M --output-format=terse >/dev/null
# A first pass warms the page cache both share (the replica and history under the view), so
# that neither measured pass reads colder than the other.
read_iops "$view_uri" >/dev/null
ti=$(read_iops "$test_uri"); vi=$(read_iops "$view_uri")
B failover stop bench --result pass >/dev/null

python3 - "$VOLUMES" "$SIZE" "$HISTORY" "$ti" "$vi" "${test_ms[*]}" "${view_ms[*]}" <<'PY'
import statistics, sys
vols, size, hist, ti, vi = sys.argv[1:6]
t = [float(x) for x in sys.argv[6].split()]
v = [float(x) for x in sys.argv[7].split()]
print(f"VPG of {vols} volumes of {size}, {hist} of writes in history; medians of {len(t)} rounds")
print(f"{'':40} {'ferry test':>12} {'checkpoint export':>18} {'ratio':>7}")
print(f"{'request to every export answering NBD':40} {statistics.median(t):>10.0f}ms {statistics.median(v):>16.0f}ms {statistics.median(t)/statistics.median(v):>7.2f}")
print(f"{'4k random reads, QD8 (IOPS)':40} {int(ti):>12} {int(vi):>18} {int(ti)/int(vi):>7.2f}")
PY
