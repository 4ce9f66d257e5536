#!/usr/bin/env bash
# Installs the Debian packages Switchyard's build, tests and driver need, when any is missing.
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail
pkgs=(cmake ninja-build g++ libboost-json1.81-dev libboost-test1.81-dev libcli11-dev libfmt-dev
      librandom123-dev libopenblas-dev libopenmpi-dev openmpi-bin python3)
# CI also builds the sanitizer and fuzzing presets (clang 14 with its runtime for libFuzzer).
if [ "${SWITCHYARD_SETUP_FUZZ:-0}" = 1 ]; then pkgs+=(clang-14 libclang-rt-14-dev); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
