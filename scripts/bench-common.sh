# Sourced by the benchmark scripts that run agents of their own (after BENCH_DIR is set):
# the agents' processes go in `pids` and are stopped, and BENCH_DIR deleted, at exit
# (KEEP_LOGS=DIR keeps BENCH_DIR's *.log files there first).
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS"; cp "$BENCH_DIR"/*.log "$KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT
# Waits (10 s at most) for a unix socket to appear.
wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
now() { date +%s.%N; }
