#!/usr/bin/env bash
# Installs ferry: the binary, its man pages and shell completions (generated from the CLI's
# definition by the binary itself), and the systemd units (ExecStart pointed at the
# installed binary), then checks the units with `systemd-analyze verify`.
#
#   PREFIX=/usr/local      where bin/, share/man/ and the completions go
#   UNITDIR=/etc/systemd/system
#   DESTDIR=               stage everything under this root (for packaging); the units are
#                          then verified with ExecStart naming the staged binary
#   FERRY_BIN=PATH         install this binary instead of building a release one
#
# Afterwards: systemctl daemon-reload && systemctl enable --now ferry-agent.service
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/usr/local}
unitdir=${UNITDIR:-/etc/systemd/system}
dest=${DESTDIR:-}

if [ -n "${FERRY_BIN:-}" ]; then
  bin=$FERRY_BIN
else
  echo "== building ferry (release)"
  cargo build --release --quiet
  bin=$PWD/target/release/ferry
fi
[ -x "$bin" ] || { echo "install.sh: no ferry binary at $bin" >&2; exit 1; }

bindir=$dest$prefix/bin
mandir=$dest$prefix/share/man/man1
bashdir=$dest$prefix/share/bash-completion/completions
zshdir=$dest$prefix/share/zsh/site-functions
fishdir=$dest$prefix/share/fish/vendor_completions.d
units=$dest$unitdir

echo "== binary: $bindir/ferry"
install -D -m 755 "$bin" "$bindir/ferry"

echo "== man pages: $mandir"
mkdir -p "$mandir"
"$bindir/ferry" man "$mandir" >/dev/null
gzip -9nf "$mandir"/ferry*.1
echo "$(ls "$mandir"/ferry*.1.gz | wc -l) pages"

echo "== completions: bash, zsh, fish"
mkdir -p "$bashdir" "$zshdir" "$fishdir"
"$bindir/ferry" completions bash >"$bashdir/ferry"
"$bindir/ferry" completions zsh >"$zshdir/_ferry"
"$bindir/ferry" completions fish >"$fishdir/ferry.fish"

echo "== systemd units: $units"
mkdir -p "$units"
sed "s|/usr/local/bin/ferry|$prefix/bin/ferry|g" scripts/systemd/ferry-agent.service >"$units/ferry-agent.service"
install -m 644 scripts/systemd/ferry-agent.socket "$units/ferry-agent.socket"
chmod 644 "$units/ferry-agent.service"

if command -v systemd-analyze >/dev/null; then
  echo "== systemd-analyze verify"
  check=$units
  if [ -n "$dest" ]; then
    # Staged: copies whose ExecStart names the staged binary, which verify checks exists.
    check=$(mktemp -d)
    trap 'rm -rf "$check"' EXIT
    sed "s|$prefix/bin/ferry|$bindir/ferry|g" "$units/ferry-agent.service" >"$check/ferry-agent.service"
    cp "$units/ferry-agent.socket" "$check/"
  fi
  out=$(systemd-analyze verify "$check/ferry-agent.service" "$check/ferry-agent.socket" 2>&1) || {
    echo "$out" >&2; exit 1; }
  [ -z "$out" ] || { echo "systemd-analyze verify warned:" >&2; echo "$out" >&2; exit 1; }
  echo "units verify cleanly"
else
  echo "== systemd-analyze not found: units not verified (apt-get install systemd)"
fi
echo "== installed; start it with: systemctl daemon-reload && systemctl enable --now ferry-agent.service"
