#!/usr/bin/env bash
# `shipyard cpp --build/--check` compiles the generated C/C++ projects: a C/C++ compiler and CMake
# from Debian, and OpenSSL's headers for programs that decrypt encrypted models (AES-256-GCM).
set -euo pipefail
here="$(dirname "$0")"
bash "$here/apt-install.bash" g++ g++
bash "$here/apt-install.bash" cmake cmake
if [ ! -f /usr/include/openssl/evp.h ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: OpenSSL headers are missing; install Debian's 'libssl-dev' package (needs root)" >&2
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends libssl-dev >/dev/null
fi
