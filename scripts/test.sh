#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs the real NBD clients and tools
# the tests drive (apt-get, as root), then formatting, clippy, unit and end-to-end tests, and
# a bounded fuzzing run of every decoder of outside bytes (their seed corpora are also
# replayed by `cargo test`, in tests/fuzz_seeds.rs).
#
#   FERRY_FUZZ_SECONDS=N   seconds per fuzz target (default 10; 0 skips fuzzing)
#   FERRY_CHAOS_SECONDS=N  seconds of scripts/chaos.sh (default 30; 0 skips it)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(qemu-utils libnbd-bin python3-libnbd nbdkit fio fuse3 e2fsprogs mount util-linux curl systemd
  chromium chromium-driver prometheus openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: missing Debian packages: ${missing[*]}; run as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "== $(date -u +%T) installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
# schemathesis (PyPI) checks the API against its OpenAPI document (scripts/api-check.sh).
schemathesis_version=4.32.5
if ! python3 -m schemathesis.cli --version 2>/dev/null | grep -q "$schemathesis_version"; then
  echo "== $(date -u +%T) installing schemathesis $schemathesis_version"
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi

echo "== $(date -u +%T) cargo fmt --check"
cargo fmt --all -- --check
echo "== $(date -u +%T) cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The tests of every binary at once, four at a time (most of them wait on agents and
# clients more than they compute), with cargo-nextest; cargo test (one binary after the
# other) where it is not installed. There are no doctests.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
threads=${FERRY_TEST_THREADS:-4}
if cargo nextest --version >/dev/null 2>&1; then
  echo "== $(date -u +%T) cargo nextest ($threads at a time)"
  cargo nextest run --workspace --no-fail-fast --test-threads "$threads" --failure-output final 2>&1 | tee "$log"
  passed=$(grep -Eo '[0-9]+ tests run: [0-9]+ passed' "$log" | tail -n 1 | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+')
  failed=$(grep -Eo '[0-9]+ failed' "$log" | tail -n 1 | grep -Eo '[0-9]+' || echo 0)
else
  echo "== $(date -u +%T) cargo test"
  cargo test --workspace 2>&1 | tee "$log"
  passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
  failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
fi

echo "== $(date -u +%T) API and metrics: schemathesis and promtool against two live agents"
FERRY_BIN=$PWD/target/debug/ferry scripts/api-check.sh

# A short soak of both sites under faults (kill -9, link cuts, full datastores); it needs
# root for its loop mounts. FERRY_CHAOS_SECONDS=0 skips it.
chaos_seconds=${FERRY_CHAOS_SECONDS:-30}
if [ "$chaos_seconds" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "== $(date -u +%T) chaos for ${chaos_seconds}s"
    FERRY_BIN=$PWD/target/debug/ferry FERRY_CHAOS_SECONDS=$chaos_seconds scripts/chaos.sh
  else
    echo "== chaos skipped: scripts/chaos.sh needs root for its loop mounts"
  fi
fi

fuzz_seconds=${FERRY_FUZZ_SECONDS:-10}
if [ "$fuzz_seconds" -gt 0 ]; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
  # cargo-fuzz wants nightly; where only stable is installed, let stable accept -Z flags.
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
  else
    fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
  fi
  # Every target in one build (codegen units in parallel: cargo-fuzz's default of one
  # serialises the optimiser on these 2 cores), then the binaries two at a time (one a
  # core), each for its time; a finding fails the run, with libFuzzer's report.
  targets=$(cd fuzz/fuzz_targets && ls *.rs | sed 's/\.rs$//')
  echo "== $(date -u +%T) fuzz: building $(echo $targets | wc -w) targets"
  (cd fuzz && "${fuzz[@]}" build --codegen-units 16 2>&1 | tail -n 2)
  export FUZZ_BIN=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release FUZZ_SECONDS=$fuzz_seconds
  echo "== $(date -u +%T) fuzz: each target for ${fuzz_seconds}s, two at a time"
  printf '%s\n' $targets | xargs -P 2 -I{} bash -c '
    t={}; mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    out=$("$FUZZ_BIN/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -artifact_prefix="fuzz/artifacts/$t/" \
      -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>&1); rc=$?
    echo "== $(date -u +%T) fuzz $t: exit $rc"
    if [ $rc -eq 0 ]; then echo "$out" | tail -n 3; else echo "$out" | tail -n 40; fi
    exit $rc'
fi
echo "== $(date -u +%T) all tests passed"
echo "tests: $passed passed, $failed failed"
