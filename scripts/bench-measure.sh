# Sourced by bench-nbd.sh and bench-replication.sh: the headline figures of a configuration,
# CPU time per write of the processes that serve it and write latency, from one fio run.
#
#   SERVE_PIDS=(...)  the serving processes (their user + system time, from /proc/PID/stat)
#   SETTLE=command    run after fio, before the CPU time is read again (e.g. until what
#                     was written has been shipped and applied: its cost counts)
#   measure RW BS QD FIO_ARGS...   prints "writes cpu_us_per_write iops MB/s p50_us p99_us"
#   fill FIO_ARGS...               writes the whole target once (1M, QD8), so what is
#                                  measured after is steady-state overwrites
ticks_of() {
  local t=0 p v
  for p in "$@"; do v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0); t=$((t + v)); done
  echo "$t"
}
measure() {
  local rw=$1 bs=$2 qd=$3; shift 3
  local t0 t1
  t0=$(ticks_of "${SERVE_PIDS[@]}")
  fio --name=measure --rw="$rw" --bs="$bs" --iodepth="$qd" --size="$SIZE" --time_based --runtime="$RUNTIME" \
    --randrepeat=0 --refill_buffers --output-format=json "$@" 2>/dev/null | sed -n '/^{/,$p' >"$BENCH_DIR/measure.json"
  ${SETTLE:-true}
  t1=$(ticks_of "${SERVE_PIDS[@]}")
  python3 - "$BENCH_DIR/measure.json" "$((t1 - t0))" "$(getconf CLK_TCK)" "${#SERVE_PIDS[@]}" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
ticks, hz, procs = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
n = max(w["total_ios"], 1)
pct = w["clat_ns"].get("percentile", {})
p = lambda q: pct.get(q, 0) / 1000
cpu = f"{ticks / hz * 1e6 / n:.1f}" if procs else "-"
print(f"{n} {cpu} {w['iops']:.0f} {w['bw_bytes'] / 1e6:.0f} {p('50.000000'):.1f} {p('99.000000'):.1f}")
PY
}
fill() {
  fio --name=fill --rw=write --bs=1M --iodepth=8 --size="$SIZE" --output-format=terse "$@" >/dev/null 2>&1
}
