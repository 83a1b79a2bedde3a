#!/usr/bin/env bash
# Replication benchmark: the headline figures are CPU time per write of the serving
# processes and write latency at queue depth 1; throughput comes second. fio's nbd engine
# writes each target whole first (so what is measured is steady-state overwrites), then
# runs 4k random writes at QD32, 1M sequential writes at QD32 and 4k random writes at QD1,
# against, in the same run, each on a fresh file of the same size:
#   off        ferry serving the volume, no replication
#   capture    the volume in a VPG, not replicated, its journal read and acknowledged by a
#              local consumer (`ferry journal tail --follow --ack`): capture's own cost
#   repl       ferry with the volume in a VPG replicated to a second, local ferry agent
#              (loopback TCP, sealed and compressed); the actual RPO is sampled every
#              second during the run, and the run's CPU counts until it is back to 0
#   repl-thr   the same with `--throttle-rpo 1s` (writes slowed to what the pipeline
#              carries, so the RPO stays bounded)
#   nbdkit     nbdkit's file plugin;  qemu-nbd   qemu-nbd on the raw file
#   mirror-wb  qemu-storage-daemon exporting the disk over NBD with a QMP blockdev-mirror
#              job in copy-mode write-blocking to a qemu-nbd target (what a Linux user
#              would set up today for synchronous replication)
#   mirror-bg  the same mirror in copy-mode background
# The configurations take turns, round after round (REPEAT rounds), medians in the table.
# Then, as root (network namespaces and tc), the shaped case: the two ferry agents in
# namespaces of their own joined by veth, A's side shaped to SHAPED_RATE with tbf, and
# fio writing incompressible 64k blocks at 90% of that rate for SHAPED_SECONDS: the RPO
# must stay steady. A benchmark, not a test: it asserts nothing.
#
#   RUNTIME=10  SIZE=1G  REPEAT=3  BENCH_DIR=/var/tmp/ferry-bench-repl
#   SHAPED_RATE=100mbit  SHAPED_SECONDS=30  (SHAPED_RATE=0 skips the shaped case)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-1G}
REPEAT=${REPEAT:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ferry-bench-repl}
SHAPED_RATE=${SHAPED_RATE:-100mbit}
SHAPED_SECONDS=${SHAPED_SECONDS:-30}
for t in fio qemu-storage-daemon qemu-nbd nbdkit python3; do
  command -v "$t" >/dev/null || { echo "bench-replication.sh: $t is missing; scripts/test.sh installs it" >&2; exit 1; }
done
cargo build --release --quiet
FERRY=$PWD/target/release/ferry
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
pids=()
NS_A="" NS_B=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$NS_A" ] && ip netns del "$NS_A" 2>/dev/null || true
  [ -n "$NS_B" ] && ip netns del "$NS_B" 2>/dev/null || true
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
A() { FERRY_CONTROL=$BENCH_DIR/a/control.sock "$FERRY" "$@"; }
B() { FERRY_CONTROL=$BENCH_DIR/b/control.sock "$FERRY" "$@"; }
rpo() { A status | sed -n 's/.*RPO \([0-9.]*\) s.*/\1/p' | head -1; }

# QMP: sends each JSON command (one per argument) to the socket $QMP and prints the replies.
qmp() {
  python3 - "$QMP" "$@" <<'PY'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
json.loads(f.readline())
def call(cmd):
    f.write(json.dumps(cmd) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            return r
call({"execute": "qmp_capabilities"})
for a in sys.argv[2:]:
    cmd = json.loads(a)
    if cmd.get("execute") == "wait-ready":
        for _ in range(6000):
            jobs = call({"execute": "query-block-jobs"})["return"]
            if jobs and all(j["ready"] for j in jobs):
                break
            time.sleep(0.05)
        print("ready"); continue
    r = call(cmd)
    if "error" in r:
        sys.exit("QMP %s: %s" % (cmd["execute"], r["error"]["desc"]))
PY
}

# Starts configuration $1 on fresh files; sets URI.
start() {
  rm -rf "$BENCH_DIR/a" "$BENCH_DIR/b" "$BENCH_DIR"/*.img "$BENCH_DIR"/*.sock
  mkdir -p "$BENCH_DIR/a" "$BENCH_DIR/b"
  local f=$BENCH_DIR/src.img
  truncate -s "$SIZE" "$f"
  case $1 in
    off|capture|repl|repl-thr)
      printf 'state_dir = "%s"\n[nbd]\nlisten = []\n' "$BENCH_DIR/a" > "$BENCH_DIR/a.toml"
      "$FERRY" agent --config "$BENCH_DIR/a.toml" --log-level warn 2>>"$BENCH_DIR/a.log" & pids+=($!)
      wait_sock "$BENCH_DIR/a/control.sock"
      A volume adopt bench "$f" >/dev/null
      URI="nbd+unix:///bench?socket=$BENCH_DIR/a/nbd.sock"
      if [ "$1" = capture ]; then
        A vpg create bench --volume bench --journal-size 1G >/dev/null
        A journal tail bench --follow --ack --quiet >/dev/null 2>&1 & pids+=($!)
      fi
      if [ "$1" = repl ] || [ "$1" = repl-thr ]; then
        local throttle=""; [ "$1" = repl-thr ] && throttle="--throttle-rpo 1s"
        "$FERRY" pair "$BENCH_DIR/key" --force >/dev/null
        printf 'state_dir = "%s"\n[nbd]\nlisten = []\n[replication]\nlisten = "127.0.0.1:10898"\npairing_keys = ["%s"]\n' \
          "$BENCH_DIR/b" "$BENCH_DIR/key" > "$BENCH_DIR/b.toml"
        "$FERRY" agent --config "$BENCH_DIR/b.toml" --log-level warn 2>>"$BENCH_DIR/b.log" & pids+=($!)
        wait_sock "$BENCH_DIR/b/control.sock"
        A vpg create bench --volume bench --journal-size 1G --peer 127.0.0.1:10898 --peer-key "$BENCH_DIR/key" $throttle >/dev/null
        for _ in $(seq 1200); do A status | grep -q 'bench: protecting' && break; sleep 0.1; done
      fi ;;
    nbdkit)
      nbdkit -f -U "$BENCH_DIR/peer.sock" file "$f" & pids+=($!)
      wait_sock "$BENCH_DIR/peer.sock"; URI="nbd+unix:///?socket=$BENCH_DIR/peer.sock" ;;
    qemu-nbd)
      qemu-nbd -f raw -t -k "$BENCH_DIR/peer.sock" "$f" & pids+=($!)
      wait_sock "$BENCH_DIR/peer.sock"; URI="nbd+unix:///?socket=$BENCH_DIR/peer.sock" ;;
    mirror-wb|mirror-bg)
      local mode=write-blocking; [ "$1" = mirror-bg ] && mode=background
      truncate -s "$SIZE" "$BENCH_DIR/tgt.img"
      qemu-nbd -f raw -k "$BENCH_DIR/tgt.sock" -t "$BENCH_DIR/tgt.img" & pids+=($!)
      wait_sock "$BENCH_DIR/tgt.sock"
      QMP=$BENCH_DIR/qmp.sock
      qemu-storage-daemon \
        --blockdev "driver=file,filename=$f,node-name=file0,aio=io_uring,cache.direct=off" \
        --blockdev driver=raw,file=file0,node-name=src \
        --nbd-server "addr.type=unix,addr.path=$BENCH_DIR/src.sock" \
        --export type=nbd,id=e0,node-name=src,name=src,writable=on \
        --chardev "socket,path=$QMP,server=on,wait=off,id=qmp0" --monitor chardev=qmp0 & pids+=($!)
      wait_sock "$QMP"; wait_sock "$BENCH_DIR/src.sock"
      qmp '{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"tgt","server":{"type":"unix","path":"'"$BENCH_DIR"'/tgt.sock"}}}' \
          '{"execute":"blockdev-mirror","arguments":{"job-id":"m0","device":"src","target":"tgt","sync":"full","copy-mode":"'"$mode"'"}}' \
          '{"execute":"wait-ready"}' >/dev/null
      URI="nbd+unix:///src?socket=$BENCH_DIR/src.sock" ;;
  esac
}

. scripts/bench-measure.sh
# After a replicated run: until the RPO is back to 0 (what was written is shipped and
# applied, its cost counted); the time it took goes to $BENCH_DIR/catchup.
settle_repl() {
  local t0; t0=$(date +%s%N)
  for _ in $(seq 1200); do [ "$(rpo)" = "0.0" ] && break; sleep 0.1; done
  echo $(( ($(date +%s%N) - t0) / 1000000 )) > "$BENCH_DIR/catchup"
}

configs=(off capture repl repl-thr nbdkit qemu-nbd mirror-wb mirror-bg)
workloads=("randwrite 4k 32" "write 1M 32" "randwrite 4k 1")
results=$BENCH_DIR/results.txt
: > "$results"
echo "qemu-storage-daemon $(qemu-storage-daemon --version | head -1 | awk '{print $3}'), nbdkit $(nbdkit --version | awk '{print $2}'), fio $(fio --version), $(nproc) cores"
for round in $(seq "$REPEAT"); do
  for c in "${configs[@]}"; do
    start "$c"
    SERVE_PIDS=("${pids[@]}")
    fill --ioengine=nbd --uri="$URI"
    SETTLE="sleep 1"
    if [ "${c%-thr}" = repl ]; then settle_repl; SETTLE=settle_repl; fi
    for w in "${workloads[@]}"; do
      set -- $w
      extra=""
      if [ "${c%-thr}" = repl ]; then
        # Sample the RPO each second while fio runs.
        ( while sleep 1; do rpo; done ) > "$BENCH_DIR/rpo.txt" 2>/dev/null & sampler=$!
      fi
      r=$(measure "$1" "$2" "$3" --ioengine=nbd --uri="$URI")
      if [ "${c%-thr}" = repl ]; then
        kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
        extra=" rpo_max=$(sort -g "$BENCH_DIR/rpo.txt" | tail -1) rpo_last=$(tail -1 "$BENCH_DIR/rpo.txt") $(awk '{v[NR]=$1} END {h=int(NR/2); a=0; b=0; for(i=1;i<=h;i++) a+=v[i]; for(i=h+1;i<=NR;i++) b+=v[i]; if (h>0) printf "rpo_mean_1st_half=%.2f rpo_mean_2nd_half=%.2f", a/h, b/(NR-h)}' "$BENCH_DIR/rpo.txt") catchup_ms=$(cat "$BENCH_DIR/catchup")"
      fi
      echo "round $round  $c  $1 $2 QD$3: writes cpu_us/write iops MB/s p50_us p99_us = $r$extra"
      echo "$c $1-$2-$3 $r$extra" >> "$results"
    done
    stop_all
  done
done

echo
echo "fio nbd engine, unix socket, ${RUNTIME}s per run, targets written whole first, median of $REPEAT rounds, $(nproc) cores"
echo "CPU: user+system time of the serving processes (both agents for repl; the agent and its"
echo "consumer for capture; qemu-storage-daemon and its qemu-nbd target for the mirrors), per write"
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
cs = ("off", "capture", "repl", "repl-thr", "nbdkit", "qemu-nbd", "mirror-wb", "mirror-bg")
def med(c, wl, col):
    v = [float(r[col]) for r in rows if r[0] == c and r[1] == wl and r[col] != "-"]
    return statistics.median(v) if v else float("nan")
def table(title, cols):
    print(title)
    print("%-22s" % "" + "".join("%10s" % c for c in cs))
    for label, wl, col in cols:
        print("%-22s" % label + "".join("%10.1f" % med(c, wl, col) for c in cs))
    print()
table("CPU µs per write (steady-state overwrites)", [
    ("randwrite 4k QD32", "randwrite-4k-32", 3), ("write 1M QD32", "write-1M-32", 3), ("randwrite 4k QD1", "randwrite-4k-1", 3)])
for wl, label in (("randwrite-4k-32", "4k QD32"), ("write-1M-32", "1M QD32")):
    m = {c: med(c, wl, 3) for c in cs}
    print("%-8s capture/off %.2fx (target 1.05)  repl/off %.2fx (target 1.4)  repl/mirror-wb %.2fx (target 0.35)  off/nbdkit %.2fx  off/qemu-nbd %.2fx" % (
        label, m["capture"] / m["off"], m["repl"] / m["off"], m["repl"] / m["mirror-wb"], m["off"] / m["nbdkit"], m["off"] / m["qemu-nbd"]))
print()
table("write latency at QD1, 4k random (µs)", [("p50", "randwrite-4k-1", 6), ("p99", "randwrite-4k-1", 7)])
off50, off99 = med("off", "randwrite-4k-1", 6), med("off", "randwrite-4k-1", 7)
for c in ("capture", "repl", "repl-thr"):
    print("%-9s p50 off%+.1f µs (target +5)   p99 %.2fx off (target 1.2)" % (
        c, med(c, "randwrite-4k-1", 6) - off50, med(c, "randwrite-4k-1", 7) / off99))
print()
table("throughput (second table): IOPS for 4k, MB/s for 1M", [
    ("randwrite 4k QD32", "randwrite-4k-32", 4), ("write 1M QD32", "write-1M-32", 5), ("randwrite 4k QD1", "randwrite-4k-1", 4)])
for wl in ("randwrite-4k-32", "write-1M-32", "randwrite-4k-1"):
    for r in rows:
        if r[0] in ("repl", "repl-thr") and r[1] == wl:
            print("%-8s %-16s RPO during the run: %s" % (r[0], wl, " ".join(r[8:])))
PY

[ "$SHAPED_RATE" = 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then echo "(shaped case skipped: needs root for network namespaces and tc)"; exit 0; fi
echo
echo "== shaped link: $SHAPED_RATE, fio writing incompressible 64k blocks at 90% of it for ${SHAPED_SECONDS}s"
NS_A=fyb-a-$$ NS_B=fyb-b-$$
ip netns add "$NS_A"; ip netns add "$NS_B"
ip -n "$NS_A" link set lo up; ip -n "$NS_B" link set lo up
ip link add fyba$$ netns "$NS_A" type veth peer name fybb$$ netns "$NS_B"
ip -n "$NS_A" addr add 10.79.0.1/24 dev fyba$$; ip -n "$NS_B" addr add 10.79.0.2/24 dev fybb$$
ip -n "$NS_A" link set fyba$$ up; ip -n "$NS_B" link set fybb$$ up
ip netns exec "$NS_A" tc qdisc add dev fyba$$ root tbf rate "$SHAPED_RATE" burst 64kb latency 100ms
rm -rf "$BENCH_DIR/a" "$BENCH_DIR/b"; mkdir -p "$BENCH_DIR/a" "$BENCH_DIR/b"
rm -f "$BENCH_DIR/src.img"; truncate -s "$SIZE" "$BENCH_DIR/src.img"   # a fresh, empty volume
"$FERRY" pair "$BENCH_DIR/key" --force >/dev/null
printf 'state_dir = "%s"\n[nbd]\nlisten = []\n' "$BENCH_DIR/a" > "$BENCH_DIR/a.toml"
printf 'state_dir = "%s"\n[nbd]\nlisten = []\n[replication]\nlisten = "10.79.0.2:10898"\npairing_keys = ["%s"]\n' \
  "$BENCH_DIR/b" "$BENCH_DIR/key" > "$BENCH_DIR/b.toml"
ip netns exec "$NS_A" "$FERRY" agent --config "$BENCH_DIR/a.toml" --log-level warn 2>>"$BENCH_DIR/a.log" & pids+=($!)
ip netns exec "$NS_B" "$FERRY" agent --config "$BENCH_DIR/b.toml" --log-level warn 2>>"$BENCH_DIR/b.log" & pids+=($!)
wait_sock "$BENCH_DIR/a/control.sock"; wait_sock "$BENCH_DIR/b/control.sock"
A volume adopt bench "$BENCH_DIR/src.img" >/dev/null
A vpg create bench --volume bench --journal-size 1G --peer 10.79.0.2:10898 --peer-key "$BENCH_DIR/key" >/dev/null
for _ in $(seq 1200); do A status | grep -q 'bench: protecting' && break; sleep 0.1; done
rate_bytes=$(python3 -c "
r='$SHAPED_RATE'.lower(); m={'kbit':1e3,'mbit':1e6,'gbit':1e9}
n=next(float(r[:-len(k)])*v for k,v in m.items() if r.endswith(k)); print(int(n/8*0.9))")
URI="nbd+unix:///bench?socket=$BENCH_DIR/a/nbd.sock"
( while sleep 1; do rpo; done ) > "$BENCH_DIR/rpo.txt" 2>/dev/null & sampler=$!
fio --name=shaped --ioengine=nbd --uri="$URI" --rw=randwrite --bs=64k --iodepth=8 --size="$SIZE" --time_based \
    --runtime="$SHAPED_SECONDS" --rate="$rate_bytes" --refill_buffers --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
  python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["write"]; print("fio wrote %.1f MB/s" % (j["bw_bytes"]/1e6))'
kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
python3 - "$BENCH_DIR/rpo.txt" <<'PY'
import sys
v = [float(x) for x in open(sys.argv[1]).read().split()]
n = len(v); h = n // 2
print("RPO each second: " + " ".join("%.1f" % x for x in v))
if n >= 4:
    print("RPO mean, first half %.2f s, second half %.2f s; max %.1f s" % (sum(v[:h]) / h, sum(v[h:]) / (n - h), max(v)))
PY
A status | grep -E 'bench:|link to'
