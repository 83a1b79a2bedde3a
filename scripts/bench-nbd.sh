#!/usr/bin/env bash
# NBD server benchmark: fio's nbd engine against ferry and its peers, one after the other
# in the same run, each on a fresh file of the same size in the same directory:
#   raw fio (io_uring on the file itself: the ceiling), nbdkit (file plugin), qemu-nbd, ferry.
# Workloads: 4k random writes at QD32, 1M sequential writes at QD32. Prints a table with
# each figure and ferry's ratio to each peer. A benchmark, not a test: it asserts nothing.
#
#   RUNTIME=15      seconds per run          SIZE=2G        file size
#   BENCH_DIR=...   where the files go       TRANSPORT=unix (or tcp)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${RUNTIME:-15}
SIZE=${SIZE:-2G}
TRANSPORT=${TRANSPORT:-unix}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ferry-bench}
PORT=${PORT:-10899}
for t in fio nbdkit qemu-nbd python3; do
  command -v "$t" >/dev/null || { echo "bench-nbd.sh: $t is missing; scripts/test.sh installs it" >&2; exit 1; }
done
cargo build --release --quiet
FERRY=$PWD/target/release/ferry
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

fresh_file() { rm -f "$1"; truncate -s "$SIZE" "$1"; }
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; echo "no socket $1" >&2; exit 1; }
uri() { # $1 unix socket, $2 export name
  if [ "$TRANSPORT" = tcp ]; then echo "nbd://127.0.0.1:$PORT/$2"; else echo "nbd+unix:///$2?socket=$1"; fi
}

# fio JSON -> "iops bw_MBps"
fio_run() { # $1 rw, $2 bs, rest: engine args
  local rw=$1 bs=$2; shift 2
  fio --name=bench --rw="$rw" --bs="$bs" --iodepth=32 --size="$SIZE" --time_based \
      --runtime="$RUNTIME" --ramp_time=2 --output-format=json "$@" 2>/dev/null | sed -n '/^{/,$p' |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["write"]; print("%.0f %.0f" % (j["iops"], j["bw_bytes"]/1e6))'
}

declare -A R
workloads=("randwrite 4k" "write 1M")

run_peer() { # $1 peer name, $2 uri
  for w in "${workloads[@]}"; do
    set -- "$1" "$2" $w
    R["$1/$3"]=$(fio_run "$3" "$4" --ioengine=nbd --uri="$2")
    echo "  $1 $3 $4: ${R[$1/$3]}"
  done
}

echo "== raw fio, io_uring on the file"
f=$BENCH_DIR/raw.img
for w in "${workloads[@]}"; do
  set -- $w; fresh_file "$f"
  R["raw/$1"]=$(fio_run "$1" "$2" --ioengine=io_uring --filename="$f")
  echo "  raw $1 $2: ${R[raw/$1]}"
done
rm -f "$f"

echo "== nbdkit $(nbdkit --version | awk '{print $2}') file plugin"
f=$BENCH_DIR/nbdkit.img; s=$BENCH_DIR/nbdkit.sock; fresh_file "$f"
if [ "$TRANSPORT" = tcp ]; then nbdkit -f -i 127.0.0.1 -p "$PORT" file "$f" & pids+=($!); sleep 1
else nbdkit -f -U "$s" file "$f" & pids+=($!); wait_sock "$s"; fi
run_peer nbdkit "$(uri "$s" "")"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; rm -f "$f"

echo "== qemu-nbd $(qemu-nbd --version | head -1 | awk '{print $2}')"
f=$BENCH_DIR/qemu.img; s=$BENCH_DIR/qemu.sock; fresh_file "$f"
if [ "$TRANSPORT" = tcp ]; then qemu-nbd -f raw -t -b 127.0.0.1 -p "$PORT" "$f" & pids+=($!); sleep 1
else qemu-nbd -f raw -t -k "$s" "$f" & pids+=($!); wait_sock "$s"; fi
run_peer qemu-nbd "$(uri "$s" "")"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; rm -f "$f"

echo "== ferry"
f=$BENCH_DIR/ferry.img; d=$BENCH_DIR/ferry-state; fresh_file "$f"; mkdir -p "$d"
printf 'state_dir = "%s"\n[nbd]\nlisten = ["127.0.0.1:%s"]\n' "$d" "$PORT" > "$BENCH_DIR/ferry.toml"
"$FERRY" agent --config "$BENCH_DIR/ferry.toml" --log-level warn & pids+=($!)
wait_sock "$d/control.sock"
FERRY_CONTROL=$d/control.sock "$FERRY" volume adopt bench "$f" >/dev/null
run_peer ferry "$(uri "$d/nbd.sock" bench)"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

echo
echo "fio nbd engine, $TRANSPORT socket, QD32, ${RUNTIME}s per run, $(nproc) cores"
printf '%-22s %12s %12s %12s %12s %10s %10s %10s\n' workload raw-fio nbdkit qemu-nbd ferry "/nbdkit" "/qemu-nbd" "/raw"
for w in "${workloads[@]}"; do
  set -- $w
  read -r ri rb <<<"${R[raw/$1]}"; read -r ki kb <<<"${R[nbdkit/$1]}"
  read -r qi qb <<<"${R[qemu-nbd/$1]}"; read -r fi fb <<<"${R[ferry/$1]}"
  if [ "$2" = 4k ]; then unit=IOPS; a=$ri b=$ki c=$qi d=$fi; else unit=MB/s; a=$rb b=$kb c=$qb d=$fb; fi
  printf '%-22s %12s %12s %12s %12s %9.2fx %9.2fx %9.2fx\n' "$1 $2 ($unit)" "$a" "$b" "$c" "$d" \
    "$(python3 -c "print($d/$b)")" "$(python3 -c "print($d/$c)")" "$(python3 -c "print($d/$a)")"
done
