#!/usr/bin/env bash
# History scale: what the recovery agent costs as its history grows. For each size in
# SIZES, a VPG is replicated between two local agents (a little real history), both are
# stopped, a synthetic history of that size is appended to the replica (examples/
# synth_history.rs: RECORD-byte writes at random offsets of an 8 GiB volume, data left as
# holes, a checkpoint every 4096 records, each segment with its index), and the recovery
# agent alone is started again. Measured, for each ferry binary given (NAME=BINARY):
#   ready      start until its replicas are loaded (status says so)
#   RSS        its resident memory then, and after the export and the reads
#   export     `ferry checkpoint export` of the newest checkpoint, until it answers
#   test       `ferry failover test` of it (after the export is gone), until it answers
#   nbd        start until the export's first NBD read answers (qemu-io)
#   reads      READS random 4k reads of the export (one qemu-io run), ms per read; then
#              the same reads again (warm: the segments' blocks in the page cache)
# and how each grows with the history. A benchmark, not a test: it asserts nothing.
#
#   scripts/bench-history.sh [NAME=BINARY ...]   (default: this tree's release build)
#   SIZES="1G 10G 100G"  RECORD=65536  READS=200  BENCH_DIR=/var/tmp/ferry-bench-history
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"1G 10G 100G"}
RECORD=${RECORD:-65536}
READS=${READS:-200}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ferry-bench-history}
VOLUME=8G
cargo build --release --quiet --example synth_history
SYNTH=$PWD/target/release/examples/synth_history
if [ $# -eq 0 ]; then
  cargo build --release --quiet
  set -- "this=$PWD/target/release/ferry"
fi
for t in qemu-io python3; do
  command -v "$t" >/dev/null || { echo "bench-history.sh: $t is missing; scripts/test.sh installs it" >&2; exit 1; }
done
. scripts/bench-common.sh
bytes() { numfmt --from=iec "$1"; }
rss_mb() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
now() { date +%s%N; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# One size, one binary: prints "name size records ready_ms rss_mb export_ms nbd_ms read_ms rss2_mb".
run() {
  local name=$1 ferry=$2 size=$3
  rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR/a" "$BENCH_DIR/b"
  truncate -s "$VOLUME" "$BENCH_DIR/vol.img"
  "$ferry" pair "$BENCH_DIR/key" --force >/dev/null
  printf 'state_dir = "%s"\n[nbd]\nlisten = []\n' "$BENCH_DIR/a" >"$BENCH_DIR/a.toml"
  printf 'state_dir = "%s"\n[nbd]\nlisten = []\n[replication]\nlisten = "127.0.0.1:10898"\npairing_keys = ["%s"]\n' \
    "$BENCH_DIR/b" "$BENCH_DIR/key" >"$BENCH_DIR/b.toml"
  "$ferry" agent --config "$BENCH_DIR/a.toml" --log-level warn 2>>"$BENCH_DIR/a.log" & local a=$!; pids+=($a)
  "$ferry" agent --config "$BENCH_DIR/b.toml" --log-level warn 2>>"$BENCH_DIR/b.log" & local b=$!; pids+=($b)
  wait_sock "$BENCH_DIR/a/control.sock"; wait_sock "$BENCH_DIR/b/control.sock"
  local A=(env FERRY_CONTROL="$BENCH_DIR/a/control.sock" "$ferry") B=(env FERRY_CONTROL="$BENCH_DIR/b/control.sock" "$ferry")
  "${A[@]}" volume adopt d "$BENCH_DIR/vol.img" >/dev/null
  "${A[@]}" vpg create app --volume d --journal-size 64M --peer 127.0.0.1:10898 --peer-key "$BENCH_DIR/key" \
    --history 30d --history-max-bytes 1T --wait >/dev/null
  qemu-io -f raw -c "write -P 0x5a 0 1M" "nbd+unix:///d?socket=$BENCH_DIR/a/nbd.sock" >/dev/null
  "${A[@]}" checkpoint tag app real >/dev/null
  for _ in $(seq 100); do "${B[@]}" checkpoint list app 2>/dev/null | grep -q real && break; sleep 0.1; done
  local rdir id
  read -r rdir id < <("${B[@]}" replica show app --json | python3 -c "import json,sys; r = json.load(sys.stdin); print(r['dir'], r['id'])")
  for p in "$a" "$b"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  pids=()
  local made; made=$("$SYNTH" "$rdir/history" "$id" "$(bytes $VOLUME)" "$(bytes "$size")" "$RECORD")
  local records; records=$(echo "$made" | awk '{print $3}')
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  local t0; t0=$(now)
  "$ferry" agent --config "$BENCH_DIR/b.toml" --log-level warn 2>>"$BENCH_DIR/b.log" & b=$!; pids+=($b)
  wait_sock "$BENCH_DIR/b/control.sock"
  for _ in $(seq 6000); do
    "${B[@]}" status --json 2>/dev/null | python3 -c "import json,sys; sys.exit(0 if not json.load(sys.stdin).get('replicas_loading') else 1)" && break
    sleep 0.02
  done
  local ready; ready=$(ms_since "$t0")
  local rss; rss=$(rss_mb "$b")
  local cp; cp=$("${B[@]}" checkpoint list app --json | python3 -c "import json,sys; print(json.load(sys.stdin)[-1]['seq'])")
  local t1; t1=$(now)
  "${B[@]}" checkpoint export app --checkpoint "$cp" >/dev/null
  local export_ms; export_ms=$(ms_since "$t1")
  local uri="nbd+unix:///app-d?socket=$BENCH_DIR/b/nbd.sock"
  uri=$("${B[@]}" checkpoint export app --checkpoint "$cp" 2>/dev/null | grep -o 'nbd[^ ]*' | head -1 || echo "$uri")
  qemu-io -r -f raw -c "read 0 4k" "$uri" >/dev/null
  local nbd; nbd=$(ms_since "$t0")
  local cmds=() i
  for i in $(seq "$READS"); do cmds+=(-c "read $(( (RANDOM * 32768 + RANDOM) % ($(bytes $VOLUME) / 4096) * 4096 )) 4k"); done
  local t2; t2=$(now)
  qemu-io -r -f raw "${cmds[@]}" "$uri" >/dev/null
  local reads; reads=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / int(sys.argv[2]):.2f}')" "$(ms_since "$t2")" "$READS")
  # The same reads again: the segments' blocks are in the page cache now.
  t2=$(now)
  qemu-io -r -f raw "${cmds[@]}" "$uri" >/dev/null
  local warm; warm=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / int(sys.argv[2]):.2f}')" "$(ms_since "$t2")" "$READS")
  local rss2; rss2=$(rss_mb "$b")
  "${B[@]}" checkpoint unexport app >/dev/null
  local t3; t3=$(now)
  "${B[@]}" failover test app --checkpoint "$cp" >/dev/null
  local test_ms; test_ms=$(ms_since "$t3")
  "${B[@]}" failover stop app --result pass >/dev/null
  echo "$name $size $records $ready $rss $export_ms $nbd $reads $rss2 $warm $test_ms"
  kill "$b"; wait "$b" 2>/dev/null || true
  pids=()
}

results=$(mktemp)
for size in $SIZES; do
  for nb in "$@"; do
    echo "$(date -u +%T) ${nb%%=*}: $size of history" >&2
    run "${nb%%=*}" "${nb#*=}" "$size" | tee -a "$results" >&2
  done
done
python3 - "$results" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"{'build':<8} {'history':>8} {'records':>9} {'ready ms':>9} {'RSS MB':>7} {'export ms':>10} {'NBD ms':>7} {'ms/read':>8} {'warm':>6} {'RSS after':>9} {'test ms':>8}")
for r in rows:
    print(f"{r[0]:<8} {r[1]:>8} {r[2]:>9} {r[3]:>9} {r[4]:>7} {r[5]:>10} {r[6]:>7} {r[7]:>8} {r[9]:>6} {r[8]:>9} {r[10]:>8}")
# Growth, per build: each size against the first.
by = {}
for r in rows:
    by.setdefault(r[0], []).append(r)
for name, rs in by.items():
    base = rs[0]
    for r in rs[1:]:
        g = lambda i: f"{float(r[i]) / max(float(base[i]), 1e-9):.1f}x"
        print(f"{name}: {base[1]} -> {r[1]} ({g(2)} records): ready {g(3)}, RSS {g(4)}, export {g(5)}, NBD {g(6)}, read {g(7)} (warm {g(9)})")
PY
rm -f "$results"
