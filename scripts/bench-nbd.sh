#!/usr/bin/env bash
# NBD server benchmark: fio's nbd engine against ferry and its peers, in the same run, each
# on a fresh file of the same size in the same directory:
#   raw fio (io_uring on the file itself: the ceiling), nbdkit (file plugin), qemu-nbd, ferry.
# ferry runs twice: as a plain NBD server, and with capture on (the volume in a VPG with a
# JOURNAL-sized journal, every write journaled, a stand-in consumer acknowledging records
# as the shipper will: `ferry journal tail --follow --ack --quiet`).
# Workloads: 4k random writes at QD32, 1M sequential writes at QD32. The peers take turns,
# round after round (REPEAT rounds), so that a noisy minute hurts all of them alike; the
# table shows each one's median and ferry's ratio to each peer. A benchmark, not a test:
# it asserts nothing.
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

# fio JSON -> "iops MB/s"
fio_run() { # $1 rw, $2 bs, rest: engine args
  local rw=$1 bs=$2; shift 2
  fio --name=bench --rw="$rw" --bs="$bs" --iodepth=32 --size="$SIZE" --time_based \
      --runtime="$RUNTIME" --ramp_time=2 --output-format=json "$@" 2>/dev/null | sed -n '/^{/,$p' |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["write"]; print("%.0f %.0f" % (j["iops"], j["bw_bytes"]/1e6))'
}

peers=(raw nbdkit qemu-nbd ferry ferry-capture)
workloads=("randwrite 4k" "write 1M")
results=$BENCH_DIR/results.txt
: > "$results"
echo "nbdkit $(nbdkit --version | awk '{print $2}'), qemu-nbd $(qemu-nbd --version | head -1 | awk '{print $2}'), fio $(fio --version)"
for round in $(seq "$REPEAT"); do
  for p in "${peers[@]}"; do
    for w in "${workloads[@]}"; do
      set -- $w
      start_peer "$p"
      if [ "$p" = raw ]; then r=$(fio_run "$1" "$2" --ioengine=io_uring --filename="$FILE")
      else r=$(fio_run "$1" "$2" --ioengine=nbd --uri="$URI"); fi
      stop_peer "$p"
      echo "round $round  $p  $1 $2: $r"
      echo "$p $1 $r" >> "$results"
    done
  done
done

echo
echo "fio nbd engine, $TRANSPORT socket, QD32, ${RUNTIME}s per run, median of $REPEAT rounds, $(nproc) cores"
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {}
for peer in ("raw", "nbdkit", "qemu-nbd", "ferry", "ferry-capture"):
    for wl in ("randwrite", "write"):
        iops = [float(r[2]) for r in rows if r[0] == peer and r[1] == wl]
        mbs = [float(r[3]) for r in rows if r[0] == peer and r[1] == wl]
        med[peer, wl] = statistics.median(iops) if wl == "randwrite" else statistics.median(mbs)
print("%-22s %10s %10s %10s %10s %9s %9s %9s" % ("workload", "raw-fio", "nbdkit", "qemu-nbd", "ferry", "/nbdkit", "/qemu-nbd", "/raw"))
for wl, label in (("randwrite", "randwrite 4k (IOPS)"), ("write", "write 1M (MB/s)")):
    f = med["ferry", wl]
    print("%-22s %10.0f %10.0f %10.0f %10.0f %8.2fx %8.2fx %8.2fx" % (
        label, med["raw", wl], med["nbdkit", wl], med["qemu-nbd", wl], f,
        f / med["nbdkit", wl], f / med["qemu-nbd", wl], f / med["raw", wl]))
print()
print("%-22s %10s %10s %14s %9s %9s" % ("capture on", "nbdkit", "ferry", "ferry+capture", "/ferry", "/nbdkit"))
for wl, label in (("randwrite", "randwrite 4k (IOPS)"), ("write", "write 1M (MB/s)")):
    c = med["ferry-capture", wl]
    print("%-22s %10.0f %10.0f %14.0f %8.2fx %8.2fx" % (
        label, med["nbdkit", wl], med["ferry", wl], c, c / med["ferry", wl], c / med["nbdkit", wl]))
PY
