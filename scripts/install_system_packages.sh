#!/usr/bin/env bash
# Install the Debian packages the tests need (a real Prometheus server, headless Chromium)
# when they are missing. Needs root or sudo; says what to do otherwise.
set -euo pipefail
declare -A BIN=([prometheus]=prometheus [chromium]=chromium)
missing=()
for pkg in "$@"; do
  command -v "${BIN[$pkg]:-$pkg}" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_system_packages: need root to install ${missing[*]} (apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_packages: no apt-get here; install ${missing[*]} with your system's package manager" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
