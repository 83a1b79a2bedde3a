#!/usr/bin/env bash
# Failover benchmark: a VPG of VOLUMES volumes of SIZE each,
# replicated between two local agents, with HISTORY bytes of random 64k writes in the
# recovery site's history; then, ROUNDS times, `ferry failover test` at the newest
# checkpoint, timed until every test export answers NBD (nbdinfo), and the same for a
# read-only checkpoint export as the baseline; then a 4k random-read pass over one test
# export with fio against the same pass over the checkpoint export (the overlay's cost on
# reads). Then a live failover (graceful) at the same checkpoint, timed until every volume
# takes a write under its production name at the recovery site; 256M of writes to it; then,
# each while fio writes 4k at QD1 to one live volume, `qemu-img convert` of the same
# checkpoint's views and the failover's commit: the copy rates, and the client's write
# latencies during each (the longest is the longest pause it saw).
# A benchmark, not a test: it asserts nothing.
#
#   VOLUMES=4  SIZE=4G  HISTORY=2G  ROUNDS=5  BENCH_DIR=/var/tmp/ferry-bench-failover
set -euo pipefail
cd "$(dirname "$0")/.."
VOLUMES=${VOLUMES:-4}
SIZE=${SIZE:-4G}
HISTORY=${HISTORY:-2G}
ROUNDS=${ROUNDS:-5}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ferry-bench-failover}
for t in fio nbdinfo python3 qemu-img qemu-io; do
  command -v "$t" >/dev/null || { echo "bench-failover.sh: $t is missing; scripts/test.sh installs it" >&2; exit 1; }
done
cargo build --release --quiet
FERRY=$PWD/target/release/ferry
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR/a" "$BENCH_DIR/b"
. scripts/bench-common.sh
A() { FERRY_CONTROL=$BENCH_DIR/a/control.sock "$FERRY" "$@"; }
B() { FERRY_CONTROL=$BENCH_DIR/b/control.sock "$FERRY" "$@"; }

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

# Live failover: until every volume takes a write under its production name.
t0=$(now)
B failover live bench --checkpoint loaded --shutdown graceful >/dev/null
for i in $(seq 0 $((VOLUMES - 1))); do
  until qemu-io -f raw "nbd+unix:///d$i?socket=$BENCH_DIR/b/nbd.sock" -c "write 0 4k" >/dev/null 2>&1; do sleep 0.005; done
done
t1=$(now)
live_ms=$(python3 -c "print(($t1 - $t0) * 1000)")
fio --name=w --ioengine=nbd --uri="nbd+unix:///d0?socket=$BENCH_DIR/b/nbd.sock" --rw=randwrite --bs=64k --iodepth=8 \
  --size="$SIZE" --io_size=256M --output-format=terse >/dev/null
# The QD1 client's volume: the second (the first took the 256M above), or the only one.
client=$(( VOLUMES > 1 ? 1 : 0 ))
# The same client writing 4k at QD1 to a live volume, during the baseline copy: qemu-img
# convert of the same checkpoint's views, every volume (both copies run under the same load).
fio --name=b --ioengine=nbd --uri="nbd+unix:///d$client?socket=$BENCH_DIR/b/nbd.sock" --rw=randwrite --bs=4k --iodepth=1 \
  --size="$SIZE" --time_based --runtime=3600 --output-format=json >"$BENCH_DIR/before-fio.json" 2>/dev/null & fpid=$!
sleep 1
mapfile -t curis < <(B checkpoint export bench --checkpoint loaded | uris_of)
t0=$(now)
for u in "${curis[@]}"; do qemu-img convert -f raw -O raw "$u" "$BENCH_DIR/convert.img"; rm -f "$BENCH_DIR/convert.img"; done
t1=$(now)
convert_s=$(python3 -c "print($t1 - $t0)")
kill -INT "$fpid" 2>/dev/null || true; wait "$fpid" || true
B checkpoint unexport bench >/dev/null
# The commit under a client writing 4k at QD1.
fio --name=c --ioengine=nbd --uri="nbd+unix:///d$client?socket=$BENCH_DIR/b/nbd.sock" --rw=randwrite --bs=4k --iodepth=1 \
  --size="$SIZE" --time_based --runtime=3600 --write_lat_log="$BENCH_DIR/commit" --log_unix_epoch=1 \
  --output-format=json >"$BENCH_DIR/commit-fio.json" 2>/dev/null & fpid=$!
sleep 1
B failover commit bench >/dev/null
kill -INT "$fpid" 2>/dev/null || true; wait "$fpid" || true
B failover status --json >"$BENCH_DIR/live.json"

python3 - "$VOLUMES" "$SIZE" "$HISTORY" "$ti" "$vi" "${test_ms[*]}" "${view_ms[*]}" "$live_ms" "$convert_s" \
  "$BENCH_DIR/live.json" "$BENCH_DIR/commit-fio.json" "$BENCH_DIR/before-fio.json" <<'PY'
import json, statistics, sys
vols, size, hist, ti, vi = sys.argv[1:6]
t = [float(x) for x in sys.argv[6].split()]
v = [float(x) for x in sys.argv[7].split()]
live_ms, convert_s = float(sys.argv[8]), float(sys.argv[9])
commit = [l for l in json.load(open(sys.argv[10])) if l["vpg"] == "bench"][0]["commit"]
def fio(path):
    text = open(path).read()
    return json.loads(text[text.index("{"):])["jobs"][0]["write"]
job, before = fio(sys.argv[11]), fio(sys.argv[12])
def p99(j):
    return j["clat_ns"]["percentile"]["99.000000"] / 1e6
copied = commit["total_bytes"]
print(f"VPG of {vols} volumes of {size}, {hist} of writes in history; medians of {len(t)} rounds")
print(f"{'':40} {'ferry test':>12} {'checkpoint export':>18} {'ratio':>7}")
print(f"{'request to every export answering NBD':40} {statistics.median(t):>10.0f}ms {statistics.median(v):>16.0f}ms {statistics.median(t)/statistics.median(v):>7.2f}")
print(f"{'4k random reads, QD8 (IOPS)':40} {int(ti):>12} {int(vi):>18} {int(ti)/int(vi):>7.2f}")
print()
print(f"live failover: request to every volume taking a write under its name: {live_ms:.0f} ms (target < 5000)")
rate, crate = commit["rate_bytes_per_s"] / 2**20, copied / convert_s / 2**20
print(f"{'':40} {'ferry commit':>12} {'qemu-img convert':>18} {'ratio':>7}")
print(f"{'copy rate of the volumes (MiB/s)':40} {rate:>12.0f} {crate:>18.0f} {rate/crate:>7.2f}")
print(f"longest pause the commit's last pass (under the write lock) imposed: {commit['longest_pause_ms']:.1f} ms")
print(f"{'a client writing 4k at QD1 (ms)':40} {'during commit':>13} {'during convert':>17}")
print(f"{'  p99 write latency':40} {p99(job):>13.2f} {p99(before):>17.2f}")
print(f"{'  largest write latency':40} {job['clat_ns']['max']/1e6:>13.1f} {before['clat_ns']['max']/1e6:>17.1f}")
print(f"{'  writes':40} {job['total_ios']:>13} {before['total_ios']:>17}")
PY
