#!/usr/bin/env bash
# The API and metrics against two live agents replicating a VPG, from outside:
#  - schemathesis (PyPI) generates requests from the served OpenAPI document and checks
#    that no answer is a 5xx, and that every status, content type, header and body is the
#    document's;
#  - `promtool check metrics` (Debian's prometheus) lints /metrics, with data in every
#    family (NBD requests, a VPG replicating, a replica, a link).
# Over TCP with the bearer token, as a remote client sees the API. Called by scripts/test.sh;
# needs a built target/debug/ferry (or FERRY_BIN).
#
#   FERRY_API_EXAMPLES=N   examples per operation (default 25)
set -euo pipefail
cd "$(dirname "$0")/.."
ferry=${FERRY_BIN:-$PWD/target/debug/ferry}
examples=${FERRY_API_EXAMPLES:-25}
dir=$(mktemp -d /tmp/ferry-api-check.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${FERRY_API_KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

read -r api_a api_b repl < <(python3 -c '
import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
mkdir -p "$dir/a" "$dir/b"
"$ferry" pair "$dir/a/pairing.key" >/dev/null
install -m 600 "$dir/a/pairing.key" "$dir/b/pairing.key"
cat >"$dir/a/agent.toml" <<EOF
state_dir = "$dir/a"
[nbd]
listen = []
[api]
listen = "127.0.0.1:$api_a"
EOF
cat >"$dir/b/agent.toml" <<EOF
state_dir = "$dir/b"
[nbd]
listen = []
[replication]
listen = "127.0.0.1:$repl"
pairing_keys = ["pairing.key"]
[api]
listen = "127.0.0.1:$api_b"
EOF
"$ferry" agent --config "$dir/a/agent.toml" --log-level warn 2>"$dir/a/agent.log" & pids+=($!)
"$ferry" agent --config "$dir/b/agent.toml" --log-level warn 2>"$dir/b/agent.log" & pids+=($!)
A() { FERRY_CONTROL=$dir/a/control.sock "$ferry" "$@"; }
B() { FERRY_CONTROL=$dir/b/control.sock "$ferry" "$@"; }
for _ in $(seq 100); do A status >/dev/null 2>&1 && B status >/dev/null 2>&1 && break; sleep 0.1; done
A volume create d0 --size 16M >/dev/null
A vpg create app --volume d0 --journal-size 16M --peer "127.0.0.1:$repl" --peer-key "$dir/a/pairing.key" --wait >/dev/null
qemu-io -f raw -c 'write -P 0x11 0 1M' -c 'read 0 64k' "nbd+unix:///d0?socket=$dir/a/nbd.sock" >/dev/null
A checkpoint tag app api-check >/dev/null
for _ in $(seq 100); do B checkpoint list app 2>/dev/null | grep -q api-check && break; sleep 0.1; done

echo "== promtool check metrics (both sites)"
for site in a b; do
  port=$([ $site = a ] && echo "$api_a" || echo "$api_b")
  curl -sf -H "Authorization: Bearer $(cat "$dir/$site/api.token")" "http://127.0.0.1:$port/metrics" >"$dir/$site.metrics"
  promtool check metrics <"$dir/$site.metrics"
  echo "site $site: $(grep -vc '^#' "$dir/$site.metrics") samples in $(grep -c '^# TYPE' "$dir/$site.metrics") families: ok"
done
for family in ferry_nbd_requests_total ferry_nbd_request_duration_seconds_bucket ferry_vpg_rpo_seconds ferry_vpg_shipped_bytes_total ferry_link_up ferry_events_total; do
  grep -q "^$family" "$dir/a.metrics" || { echo "site a's /metrics has no $family" >&2; exit 1; }
done
grep -q '^ferry_replica_history_bytes{vpg="app"}' "$dir/b.metrics" || { echo "site b's /metrics has no replica history" >&2; exit 1; }

echo "== the event stream (Server-Sent Events) carries a pause and a resume"
curl -sN --max-time 4 -H "Authorization: Bearer $(cat "$dir/a/api.token")" "http://127.0.0.1:$api_a/v1/events/stream" >"$dir/sse" &
sse=$!
sleep 0.5
A vpg pause app >/dev/null
A vpg resume app >/dev/null
wait $sse || true
grep -q '^event: event' "$dir/sse" && grep -q '"source":"vpg app"' "$dir/sse" \
  || { echo "the event stream carried no event of VPG app:" >&2; cat "$dir/sse" >&2; exit 1; }
echo "$(grep -c '^event: event' "$dir/sse") events streamed: ok"

# The operations reach real objects: every path parameter names the VPG or volume.
cat >"$dir/schemathesis.toml" <<EOF
[parameters]
"path.name" = "app"
"path.vpg" = "app"
EOF
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
for site in a b; do
  port=$([ $site = a ] && echo "$api_a" || echo "$api_b")
  echo "== $(date -u +%T) schemathesis against site $site ($examples examples per operation)"
  rc=0
  (cd "$dir" && python3 -m schemathesis.cli --config-file schemathesis.toml run "http://127.0.0.1:$port/v1/openapi.json" \
    -H "Authorization: Bearer $(cat "$dir/$site/api.token")" --checks "$checks" \
    --max-examples "$examples" --exclude-path /v1/events/stream --no-color >"$dir/st-$site.log" 2>&1) || rc=$?
  sed -n '/SUMMARY/,$p' "$dir/st-$site.log" | grep -v '^\s*$'
  if [ $rc -ne 0 ]; then
    echo "schemathesis found failures at site $site (exit $rc):" >&2
    sed -n '/FAILURES/,/SUMMARY/p' "$dir/st-$site.log" >&2
    exit 1
  fi
done
for site in a b; do
  if grep -q "panicked" "$dir/$site/agent.log"; then
    echo "agent $site panicked:" >&2; grep -A5 panicked "$dir/$site/agent.log" >&2; exit 1
  fi
done
echo "== api-check: ok"
