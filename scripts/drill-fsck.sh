#!/usr/bin/env bash
# A failover drill's check: attaches each test export through nbdfuse and a read-only
# loop device and runs `e2fsck -fn` on it (nothing is written). Exit 0 when every
# filesystem is clean.
#
#   ferry failover test VPG --verify scripts/drill-fsck.sh --stop-after
#   scripts/drill-fsck.sh [VOLUME=URI ...]    (default: $FERRY_EXPORT_URIS, set by ferry)
#
# Needs nbdfuse, losetup, e2fsck and fusermount3 (Debian: nbdfuse, mount, e2fsprogs, fuse3),
# and root for the loop device. Everything it attaches is detached on exit.
set -uo pipefail
[ $# -gt 0 ] || set -- ${FERRY_EXPORT_URIS:-}
if [ $# -eq 0 ]; then
  echo "drill-fsck: no exports given (VOLUME=URI arguments, or \$FERRY_EXPORT_URIS)" >&2
  exit 2
fi
for t in nbdfuse losetup e2fsck fusermount3; do
  command -v "$t" >/dev/null || { echo "drill-fsck: $t is missing" >&2; exit 2; }
done
work=$(mktemp -d /tmp/ferry-drill.XXXXXX)
pids=() loops=() mounts=()
cleanup() {
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null; done
  for m in "${mounts[@]}"; do fusermount3 -u "$m" 2>/dev/null; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

failed=0
for pair in "$@"; do
  vol=${pair%%=*} uri=${pair#*=}
  dir=$work/$vol
  mkdir -p "$dir"
  nbdfuse -r "$dir" "$uri" >/dev/null 2>"$work/$vol.nbdfuse.log" & pids+=($!)
  mounts+=("$dir")
  for _ in $(seq 200); do [ -s "$dir/nbd" ] && break; sleep 0.05; done
  if [ ! -s "$dir/nbd" ]; then
    echo "$vol: FAIL: nbdfuse did not attach $uri: $(cat "$work/$vol.nbdfuse.log")"
    failed=1
    continue
  fi
  dev=$(losetup --find --show --read-only "$dir/nbd") || { echo "$vol: FAIL: losetup"; failed=1; continue; }
  loops+=("$dev")
  out=$(e2fsck -fn "$dev" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then
    echo "$vol: clean ($(echo "$out" | tail -n 1))"
  else
    echo "$vol: FAIL: e2fsck exit $rc"
    echo "$out" | tail -n 5 | sed 's/^/  /'
    failed=1
  fi
done
exit $failed
