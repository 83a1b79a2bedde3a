#!/usr/bin/env bash
# Both sites on this machine, on built-in defaults: a protected agent and a recovery agent
# on loopback, paired; a VPG with one volume, replicating; a write that reaches the
# recovery site, shown there as a checkpoint export equal to the source. Then the status of
# both sites every few seconds, with the URIs to write to and to read from, until Ctrl-C
# (which stops both agents and removes the demo's directory).
#
#   FERRY_DEMO_DIR=DIR      where the two agents live (default /tmp/ferry-demo)
#   FERRY_DEMO_SECONDS=N    stop by itself after N seconds (default: run until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-io >/dev/null || ! command -v qemu-img >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "== installing qemu-utils (qemu-io and qemu-img write and compare the demo's disk)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
  else
    echo "demo.sh: needs qemu-io and qemu-img: sudo apt-get install qemu-utils" >&2
    exit 1
  fi
fi

echo "== building ferry (release)"
cargo build --release --quiet
ferry=$PWD/target/release/ferry
dir=${FERRY_DEMO_DIR:-/tmp/ferry-demo}
prot=$dir/protected rec=$dir/recovery
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
rm -rf "$dir"
mkdir -p "$prot" "$rec"

# Free ports on loopback for the two agents.
read -r nbd_a nbd_b repl api_a api_b < <(python3 -c '
import socket
s=[socket.socket() for _ in range(5)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

"$ferry" pair "$prot/pairing.key" >/dev/null
install -m 600 "$prot/pairing.key" "$rec/pairing.key"   # "copy it to the peer"
cat >"$prot/agent.toml" <<EOF
state_dir = "$prot"
[nbd]
listen = ["127.0.0.1:$nbd_a"]
[api]
listen = "127.0.0.1:$api_a"
EOF
cat >"$rec/agent.toml" <<EOF
state_dir = "$rec"
[nbd]
listen = ["127.0.0.1:$nbd_b"]
[replication]
listen = "127.0.0.1:$repl"
pairing_keys = ["pairing.key"]
[api]
listen = "127.0.0.1:$api_b"
EOF
"$ferry" agent --config "$prot/agent.toml" --log-level warn 2>"$prot/agent.log" & pids+=($!)
"$ferry" agent --config "$rec/agent.toml" --log-level warn 2>"$rec/agent.log" & pids+=($!)
A() { FERRY_CONTROL=$prot/control.sock "$ferry" "$@"; }
B() { FERRY_CONTROL=$rec/control.sock "$ferry" "$@"; }
for _ in $(seq 100); do A status >/dev/null 2>&1 && B status >/dev/null 2>&1 && break; sleep 0.1; done

echo "== protected site: a 256 MiB volume with data, then a VPG replicating it"
A volume create disk0 --size 256M
qemu-io -f raw -c 'write -P 0x5a 0 4M' "nbd://127.0.0.1:$nbd_a/disk0" | tail -n 1
A vpg create app --volume disk0 --journal-size 256M --peer "127.0.0.1:$repl" --peer-key "$prot/pairing.key"

echo "== a write while protected, and a tagged checkpoint"
qemu-io -f raw -c 'write -P 0xc3 64M 1M' "nbd://127.0.0.1:$nbd_a/disk0" | tail -n 1
start=$(date +%s.%N)
for _ in $(seq 600); do A checkpoint tag app first-write >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 600); do B checkpoint list app 2>/dev/null | grep -q first-write && break; sleep 0.1; done
printf '== the recovery site holds checkpoint first-write (%.1f s after tagging)\n' \
  "$(python3 -c "import time; print(time.time() - $start)")"
B checkpoint list app
B checkpoint export app --checkpoint first-write
uri=$(B checkpoint export app --checkpoint first-write | awk '/disk0: /{print $2}')
echo "== qemu-img compare: recovery-site checkpoint vs. the protected volume"
qemu-img compare -f raw -F raw "$uri" "nbd://127.0.0.1:$nbd_a/disk0"

cat <<EOF

Replication is live. Try, in another terminal:
  write to the protected disk:   qemu-io -f raw -c 'write -P 0x77 0 1M' nbd://127.0.0.1:$nbd_a/disk0
  tag a checkpoint:              FERRY_CONTROL=$prot/control.sock $ferry checkpoint tag app mine
  list checkpoints (recovery):   FERRY_CONTROL=$rec/control.sock $ferry checkpoint list app
  export one (recovery):         FERRY_CONTROL=$rec/control.sock $ferry checkpoint export app --checkpoint mine
  read the export:               qemu-io -f raw -r -c 'read -P 0x77 0 1M' nbd://127.0.0.1:$nbd_b/app@SEQ.disk0
  the dashboards:                http://127.0.0.1:$api_a/ui/ (protected; token: $(cat "$prot/api.token"))
                                 http://127.0.0.1:$api_b/ui/ (recovery; token: $(cat "$rec/api.token"))
Ctrl-C stops both agents and removes $dir.
EOF
end=$(( $(date +%s) + ${FERRY_DEMO_SECONDS:-1000000000} ))
while [ "$(date +%s)" -lt "$end" ]; do
  echo; echo "---- protected site ($(date +%T))"; A status | sed -n '/^VPGs/,$p'
  echo "---- recovery site"; B status | sed -n '/^replicas/,$p'
  sleep 5
done
