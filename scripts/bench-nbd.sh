#!/usr/bin/env bash
# NBD server benchmark: ferry and its peers, in the same run, each on a fresh file of the
# same size in the same directory, written whole first (steady-state overwrites):
#   raw fio (io_uring on the file itself: the ceiling), nbdkit (file plugin), qemu-nbd, ferry.
# ferry runs twice: as a plain NBD server, and with capture on (the volume in a VPG with a
# JOURNAL-sized journal, every write journaled, a stand-in consumer acknowledging records
# as the shipper will: `ferry journal tail --follow --ack --quiet`).
# Headline figures: CPU time per write of the serving processes (the consumer counted with
# capture) and write latency p50/p99 at QD1; throughput comes second. Workloads: 4k random
# writes at QD32, 1M sequential writes at QD32, 4k random writes at QD1. The peers take
# turns, round after round (REPEAT rounds), so that a noisy minute hurts all of them alike;
# the tables show medians and ferry's ratios. A benchmark, not a test: it asserts nothing.
#
#   RUNTIME=10   seconds per run        SIZE=2G          file size
#   REPEAT=3     rounds                 TRANSPORT=unix   or tcp
#   BENCH_DIR=/var/tmp/ferry-bench      JOURNAL=1G       journal size with capture on
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-2G}
REPEAT=${REPEAT:-3}
TRANSPORT=${TRANSPORT:-unix}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ferry-bench}
PORT=${PORT:-10899}
JOURNAL=${JOURNAL:-1G}
for t in fio nbdkit qemu-nbd python3; do
  command -v "$t" >/dev/null || { echo "bench-nbd.sh: $t is missing; scripts/test.sh installs it" >&2; exit 1; }
done
cargo build --release --quiet
FERRY=$PWD/target/release/ferry
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
pid=""
cpid=""
cleanup() {
  [ -n "$cpid" ] && kill "$cpid" 2>/dev/null || true
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; echo "no socket $1" >&2; exit 1; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on port $PORT" >&2; exit 1; }

# Starts peer $1 on a fresh file; sets URI (or FILE for raw) and pid.
start_peer() {
  local f=$BENCH_DIR/$1.img s=$BENCH_DIR/$1.sock
  rm -f "$f" "$s"; truncate -s "$SIZE" "$f"
  case $1 in
    raw) FILE=$f; pid="" ;;
    nbdkit)
      if [ "$TRANSPORT" = tcp ]; then nbdkit -f -i 127.0.0.1 -p "$PORT" file "$f" & pid=$!; wait_port; URI="nbd://127.0.0.1:$PORT/"
      else nbdkit -f -U "$s" file "$f" & pid=$!; wait_sock "$s"; URI="nbd+unix:///?socket=$s"; fi ;;
    qemu-nbd)
      if [ "$TRANSPORT" = tcp ]; then qemu-nbd -f raw -t -b 127.0.0.1 -p "$PORT" "$f" & pid=$!; wait_port; URI="nbd://127.0.0.1:$PORT/"
      else qemu-nbd -f raw -t -k "$s" "$f" & pid=$!; wait_sock "$s"; URI="nbd+unix:///?socket=$s"; fi ;;
    ferry|ferry-capture)
      local d=$BENCH_DIR/ferry-state; rm -rf "$d"; mkdir -p "$d"
      printf 'state_dir = "%s"\n[nbd]\nlisten = ["127.0.0.1:%s"]\n' "$d" "$PORT" > "$BENCH_DIR/ferry.toml"
      "$FERRY" agent --config "$BENCH_DIR/ferry.toml" --log-level warn & pid=$!
      wait_sock "$d/control.sock"
      FERRY_CONTROL=$d/control.sock "$FERRY" volume adopt bench "$f" >/dev/null
      if [ "$1" = ferry-capture ]; then
        FERRY_CONTROL=$d/control.sock "$FERRY" vpg create bench --volume bench --journal-size "$JOURNAL" >/dev/null
        FERRY_CONTROL=$d/control.sock "$FERRY" journal tail bench --follow --ack --quiet > "$BENCH_DIR/consumer.log" & cpid=$!
      fi
      if [ "$TRANSPORT" = tcp ]; then URI="nbd://127.0.0.1:$PORT/bench"; else URI="nbd+unix:///bench?socket=$d/nbd.sock"; fi ;;
  esac
}
stop_peer() {
  if [ -n "$cpid" ]; then
    # What capture did during the run, before the agent goes: its state and events.
    FERRY_CONTROL=$BENCH_DIR/ferry-state/control.sock "$FERRY" vpg show bench | sed -n '1,2p;/events:/,$p' | sed 's/^/    /'
    kill -INT "$cpid"; wait "$cpid" 2>/dev/null || true; cpid=""
  fi
  if [ -n "$pid" ]; then kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; fi
  rm -f "$BENCH_DIR/$1.img"
}

. scripts/bench-measure.sh
SETTLE="sleep 1"
peers=(raw nbdkit qemu-nbd ferry ferry-capture)
workloads=("randwrite 4k 32" "write 1M 32" "randwrite 4k 1")
results=$BENCH_DIR/results.txt
: > "$results"
echo "nbdkit $(nbdkit --version | awk '{print $2}'), qemu-nbd $(qemu-nbd --version | head -1 | awk '{print $2}'), fio $(fio --version)"
for round in $(seq "$REPEAT"); do
  for p in "${peers[@]}"; do
    start_peer "$p"
    SERVE_PIDS=($pid $cpid)
    if [ "$p" = raw ]; then engine=(--ioengine=io_uring --filename="$FILE"); else engine=(--ioengine=nbd --uri="$URI"); fi
    fill "${engine[@]}"
    for w in "${workloads[@]}"; do
      set -- $w
      r=$(measure "$1" "$2" "$3" "${engine[@]}")
      echo "round $round  $p  $1 $2 QD$3: writes cpu_us/write iops MB/s p50_us p99_us = $r"
      echo "$p $1-$2-$3 $r" >> "$results"
    done
    stop_peer "$p"
  done
done

echo
echo "fio, $TRANSPORT socket, ${RUNTIME}s per run, targets written whole first, median of $REPEAT rounds, $(nproc) cores"
echo "(raw: fio's io_uring engine on the file itself, the ceiling; it has no serving process)"
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
ps = ("raw", "nbdkit", "qemu-nbd", "ferry", "ferry-capture")
def med(p, wl, col):
    v = [float(r[col]) for r in rows if r[0] == p and r[1] == wl and r[col] != "-"]
    return statistics.median(v) if v else float("nan")
wls = (("randwrite 4k QD32", "randwrite-4k-32"), ("write 1M QD32", "write-1M-32"), ("randwrite 4k QD1", "randwrite-4k-1"))
def table(title, col, cols=wls):
    print(title)
    print("%-22s" % "" + "".join("%14s" % p for p in ps) + "  ferry/nbdkit  ferry/qemu-nbd  capture/ferry")
    for label, wl in cols:
        m = {p: med(p, wl, col) for p in ps}
        print("%-22s" % label + "".join("%14.1f" % m[p] for p in ps) + "  %11.2fx  %13.2fx  %12.2fx" % (
            m["ferry"] / m["nbdkit"], m["ferry"] / m["qemu-nbd"], m["ferry-capture"] / m["ferry"]))
    print()
table("CPU µs per write of the serving process (steady-state overwrites)", 3)
table("write latency at QD1, 4k random, p50 (µs)", 6, wls[2:])
table("write latency at QD1, 4k random, p99 (µs)", 7, wls[2:])
print("throughput (second table)")
table("IOPS", 4, (wls[0], wls[2]))
table("MB/s", 5, wls[1:2])
PY
