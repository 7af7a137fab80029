#!/usr/bin/env bash
# Installs cubebox's system packages and npm dependencies, builds it, and (unless --no-start)
# starts `cubebox serve` in the background with the default data directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(crun runc runsc tini iproute2 nftables debootstrap busybox-static golang-github-containers-common
      util-linux e2fsprogs procps psmisc ca-certificates build-essential python3 xz-utils zstd
      criu skopeo umoci)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
npm ci --no-audit --no-fund
npm run build
if [[ "${1:-}" != "--no-start" ]]; then
  node dist/src/cli/main.js doctor
  mkdir -p /var/log
  nohup node dist/src/cli/main.js serve >/var/log/cubebox.log 2>&1 &
  echo "cubebox serve started (pid $!), logs in /var/log/cubebox.log"
fi
