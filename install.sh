#!/usr/bin/env bash
# Install visarl on a fresh Debian/Ubuntu machine: the Mesa libraries MuJoCo needs to render headless
# on the CPU (EGL, with OSMesa as the fallback), then the package itself (with --dev: the test tools and the
# Chromium the browser tests drive).
set -euo pipefail
cd "$(dirname "$0")"

extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
pkgs=(libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libosmesa6)
# The annotation page's browser tests drive Debian's Chromium through Playwright (no browser download).
[ -n "$extra" ] && pkgs+=(chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install.sh: installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python -m pip install --quiet --disable-pip-version-check -e ".${extra}"
