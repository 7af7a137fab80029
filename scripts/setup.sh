#!/usr/bin/env bash
# Installs cubebox's system packages and npm dependencies, builds it, and (unless --no-start)
# starts `cubebox serve` in the background with the default data directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(crun runc runsc tini iproute2 nftables conntrack openssl debootstrap busybox-static golang-github-containers-common
      util-linux e2fsprogs procps psmisc curl ca-certificates build-essential python3 xz-utils zstd
      criu skopeo umoci docker-registry apache2-utils postgresql chromium fonts-dejavu-core)
# kubectl renders the Kubernetes base (kubectl kustomize) in the tests: Debian's, unless one is installed
command -v kubectl >/dev/null 2>&1 || PKGS+=(kubernetes-client)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # tests start their own registry: the package's service (port 5000 on every address) stays off
  if [[ " ${missing[*]} " == *" docker-registry "* ]]; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
  # the same for PostgreSQL: tests and the local cluster start their own servers in temporary directories
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then systemctl disable --now postgresql >/dev/null 2>&1 || true; fi
fi
npm ci --no-audit --no-fund
npm run build
# The templates' cache entries under /var/cache/cubebox: base and the code-interpreter-v1 layer on
# it (built once, about 10 minutes; then a tar extraction), so that serve and the tests start fast.
work=$(mktemp -d /var/tmp/cubebox-setup-XXXXXX)
mkdir "$work/base" "$work/layer"
node --input-type=module -e "
  const { hostConfig } = await import('./dist/src/app/config.js');
  const { buildDebianBase } = await import('./dist/src/template/debian-base.js');
  const { buildCodeInterpreterLayer } = await import('./dist/src/template/code-interpreter.js');
  const opts = { cacheDir: hostConfig().cacheDir, onProgress: (l) => /^(base|code-interpreter): /.test(l) && console.log(l) };
  await buildDebianBase('$work/base', opts);
  await buildCodeInterpreterLayer('$work/layer', ['$work/base'], opts);
"
rm -rf --one-file-system "$work"
if [[ "${1:-}" != "--no-start" ]]; then
  node dist/src/cli/main.js doctor
  port="${CUBEBOX_PORT:-3000}"
  if curl -fsS "http://127.0.0.1:${port}/health" >/dev/null 2>&1; then
    echo "cubebox serve already answers on port ${port}"
  else
    nohup node dist/src/cli/main.js serve >/var/log/cubebox.log 2>&1 &
    echo "cubebox serve started (pid $!), logs in /var/log/cubebox.log; waiting for it (the first start builds the base template, about 1-2 minutes)"
    for _ in $(seq 1 900); do
      curl -fsS "http://127.0.0.1:${port}/health" >/dev/null 2>&1 && break
      if ! kill -0 "$!" 2>/dev/null; then echo "cubebox serve exited; see /var/log/cubebox.log" >&2; tail -20 /var/log/cubebox.log >&2; exit 1; fi
      sleep 1
    done
  fi
  echo "cubebox serve is ready on http://127.0.0.1:${port} with the base template."
  echo "Create an API key with: node dist/src/cli/main.js keys create"
fi
