#!/usr/bin/env bash
# A bounded soak of both sites under faults. Two agents on loopback, the link between them
# through a proxy that can be cut, each site's datastore on a small ext4 of its own (loop
# mounted). Round after round, fio writes and verifies a protected volume while one fault,
# drawn from a seeded random sequence, is injected:
#   kill-recovery    kill -9 of the recovery agent, restarted 3 s later
#   kill-protected   kill -9 of the protected agent under a libnbd writer that records what
#                    was acknowledged; restarted, every acknowledged write must be there
#   link-cut         the link is cut for 8 s
#   fill-recovery    the recovery datastore is filled (history cannot be written) for 8 s
#   fill-protected   the protected datastore is filled: writes to a sparse volume of the
#                    VPG are refused (ENOSPC) and must never be shipped; then freed
# Each round ends with a tagged checkpoint that must reach the recovery site and compare
# identical, volume by volume, to the protected volumes. A summary of the faults injected
# and the comparisons closes the run; any failure exits 1.
#
#   scripts/chaos.sh [MINUTES]   (default 5; needs root for the loop mounts)
#   FERRY_CHAOS_SEED=N           the fault sequence (default: from the clock; printed)
#   FERRY_BIN=PATH               the ferry binary (default: target/release/ferry, built)
#   FERRY_CHAOS_SECONDS=N        run N seconds instead of MINUTES (a short run, in CI)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

minutes=${1:-5}
seed=${FERRY_CHAOS_SEED:-$(date +%s)}
RANDOM=$seed
if [ -z "${FERRY_BIN:-}" ]; then
  cargo build --release --quiet
  FERRY_BIN=$root/target/release/ferry
fi
ferry=$FERRY_BIN
for t in fio qemu-io qemu-img mkfs.ext4 python3; do
  command -v "$t" >/dev/null || { echo "chaos.sh: needs $t (scripts/test.sh installs the test tools)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "chaos.sh: needs root (it loop-mounts two small filesystems)" >&2; exit 1; }

dir=$(mktemp -d /tmp/ferry-chaos.XXXXXX)
a=$dir/protected b=$dir/recovery
mkdir -p "$a" "$b" "$dir/fs-a" "$dir/fs-b"
pids_a="" pids_b="" proxy="" bg=""
cleanup() {
  for p in $bg $proxy $pids_a $pids_b; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for m in "$dir/fs-a" "$dir/fs-b"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  if [ "${keep:-0}" = 1 ]; then echo "chaos: kept $dir for inspection"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

log() { echo "chaos $(date -u +%T) $*"; }

# The two datastores: 256 MiB at the protected site, 512 MiB at the recovery site.
for side in a:256 b:512; do
  n=${side%%:*} mib=${side##*:}
  truncate -s "${mib}M" "$dir/fs-$n.img"
  mkfs.ext4 -q -F -m 0 "$dir/fs-$n.img"
  mount -o loop "$dir/fs-$n.img" "$dir/fs-$n"
done

read -r nbd_a nbd_b repl link < <(python3 -c '
import socket
s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
"$ferry" pair "$a/pairing.key" >/dev/null
install -m 600 "$a/pairing.key" "$b/pairing.key"
cat >"$a/agent.toml" <<EOF
state_dir = "$a"
[nbd]
listen = ["127.0.0.1:$nbd_a"]
[[datastore]]
name = "small"
path = "$dir/fs-a"
EOF
cat >"$b/agent.toml" <<EOF
state_dir = "$b"
[nbd]
listen = ["127.0.0.1:$nbd_b"]
[[datastore]]
name = "small"
path = "$dir/fs-b"
[replication]
listen = "127.0.0.1:$repl"
pairing_keys = ["pairing.key"]
EOF

fa() { FERRY_CONTROL=$a/control.sock "$ferry" "$@"; }
fb() { FERRY_CONTROL=$b/control.sock "$ferry" "$@"; }
up() { # SIDE: starts its agent and waits until it answers
  local d=$1
  "$ferry" agent --config "$d/agent.toml" >>"$d/agent.log" 2>&1 &
  local pid=$!
  if [ "$d" = "$a" ]; then pids_a=$pid; else pids_b=$pid; fi
  for _ in $(seq 200); do
    if FERRY_CONTROL=$d/control.sock "$ferry" status 2>/dev/null | grep -qv "replicas: loading"; then return 0; fi
    sleep 0.1
  done
  echo "chaos: the agent in $d did not come up" >&2
  return 1
}
kill9() { # SIDE
  if [ "$1" = "$a" ]; then kill -9 "$pids_a"; wait "$pids_a" 2>/dev/null || true; else kill -9 "$pids_b"; wait "$pids_b" 2>/dev/null || true; fi
}
proxy_up() { python3 "$root/tests/scripts/proxy.py" "$link" "127.0.0.1:$repl" & proxy=$!; sleep 0.3; }
proxy_cut() { kill -9 "$proxy" 2>/dev/null || true; wait "$proxy" 2>/dev/null || true; proxy=""; }
fill() { # MOUNT: leaves about 512 KiB free
  local free
  free=$(df -B1 --output=avail "$1" | tail -1)
  fallocate -l $((free - 524288)) "$1/ballast" 2>/dev/null || dd if=/dev/zero of="$1/ballast" bs=1M count=$(((free - 524288) >> 20)) status=none 2>/dev/null || true
}
unfill() { rm -f "$1/ballast"; }

up "$b"
up "$a"
proxy_up
fa volume create d0 --size 64M >/dev/null
fa volume create d1 --size 128M >/dev/null
uri0="nbd+unix:///d0?socket=$a/nbd.sock"
# d0 wholly written first: its overwrites never need new blocks, so a full datastore only
# refuses writes to the sparse d1.
fio --name=fill --ioengine=nbd --uri="$uri0" --rw=write --bs=1M --size=64M --output=/dev/null
fa vpg create app --volume d0 --volume d1 --journal-size 64M --history 30s --history-max-bytes 64M \
  --peer "127.0.0.1:$link" --peer-key "$a/pairing.key" >/dev/null
span=${FERRY_CHAOS_SECONDS:-$((minutes * 60))}
log "seed $seed, $span s; protected agent $a, recovery agent $b"

declare -A faults=()
rounds=0 compared=0 identical=0 failures=0 acked_ok=0
fail() { log "FAILURE: $*"; failures=$((failures + 1)); keep=1; }

checkpoint_round() { # TAG: the checkpoint reaches the recovery site and equals the volumes
  local tag=$1 deadline=$((SECONDS + 240))
  until fa checkpoint tag app "$tag" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { fail "$tag: no checkpoint accepted ($(fa vpg show app | head -3 | tr '\n' ' '))"; return; }
    sleep 1
  done
  until fb checkpoint list app 2>/dev/null | grep -q " $tag\$"; do
    [ $SECONDS -lt $deadline ] || { fail "$tag: never reached the recovery site"; return; }
    sleep 1
  done
  local out
  out=$(fb checkpoint export app --checkpoint "$tag")
  for v in d0 d1; do
    local exp
    exp=$(echo "$out" | sed -n "s/^ *$v: //p")
    compared=$((compared + 1))
    if qemu-img compare -f raw -F raw "nbd://127.0.0.1:$nbd_a/$v" "$exp" >/dev/null 2>&1; then
      identical=$((identical + 1))
    else
      fail "$tag: $v differs at the recovery site ($(qemu-img compare -f raw -F raw "nbd://127.0.0.1:$nbd_a/$v" "$exp" 2>&1 | tail -1))"
    fi
  done
  fb checkpoint unexport app >/dev/null
}

names=(kill-recovery kill-protected link-cut fill-recovery fill-protected)
end=$((SECONDS + span))
while [ $SECONDS -lt $end ]; do
  rounds=$((rounds + 1))
  f=${names[$((RANDOM % ${#names[@]}))]}
  faults[$f]=$((${faults[$f]:-0} + 1))
  log "round $rounds: $f"
  if [ "$f" = kill-protected ]; then
    PATH=/usr/bin:$PATH /usr/bin/python3 "$root/tests/scripts/acked_writes.py" write "$uri0" $((64 << 20)) "$dir/acked.json" >"$dir/acked.log" 2>&1 &
    bg=$!
    sleep 3
    kill9 "$a"
    wait "$bg" 2>/dev/null || true
    bg=""
    up "$a"
    if PATH=/usr/bin:$PATH /usr/bin/python3 "$root/tests/scripts/acked_writes.py" verify "$uri0" "$dir/acked.json" >>"$dir/acked.log" 2>&1; then
      acked_ok=$((acked_ok + 1))
    else
      fail "round $rounds: acknowledged writes lost after kill -9: $(tail -3 "$dir/acked.log")"
    fi
  else
    fio --name=w --ioengine=nbd --uri="$uri0" --rw=randwrite --bsrange=4k-64k --iodepth=16 --size=64M \
      --io_size=24M --verify=crc32c --verify_fatal=1 --do_verify=1 --randseed=$((seed + rounds)) \
      --output="$dir/fio.log" &
    bg=$!
    sleep 2
    case $f in
      kill-recovery) kill9 "$b"; sleep 3; up "$b" ;;
      link-cut) proxy_cut; sleep 8; proxy_up ;;
      fill-recovery) fill "$dir/fs-b"; sleep 8; unfill "$dir/fs-b" ;;
      fill-protected)
        fill "$dir/fs-a"
        qemu-io -f raw -c "write -P $((rounds % 250 + 1)) $(((RANDOM % 100) << 20)) 4M" "nbd://127.0.0.1:$nbd_a/d1" >"$dir/enospc.log" 2>&1 || true
        if grep -q "No space left" "$dir/enospc.log"; then
          faults[enospc-refused]=$((${faults[enospc-refused]:-0} + 1))
        else
          log "  the write to the full datastore was not refused: $(tail -1 "$dir/enospc.log")"
        fi
        sleep 2
        unfill "$dir/fs-a"
        ;;
    esac
    if ! wait "$bg"; then
      fail "round $rounds: fio failed under $f (production first: the client must never see a replication fault): $(grep -m3 -E 'err=|verify' "$dir/fio.log" | tr '\n' ' ')"
    fi
    bg=""
    [ -n "$proxy" ] || proxy_up
  fi
  checkpoint_round "round-$rounds"
done

echo
echo "== chaos summary (seed $seed, $span s, $rounds rounds)"
for k in "${!faults[@]}"; do printf '  %-16s %d\n' "$k" "${faults[$k]}"; done | sort
echo "  kill -9 of the protected agent: acknowledged writes all present after $acked_ok of ${faults[kill-protected]:-0}"
echo "  checkpoints compared: $identical of $compared volumes identical"
echo "  failures: $failures"
[ "$failures" -eq 0 ]
