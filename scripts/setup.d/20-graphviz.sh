#!/usr/bin/env bash
# Graphviz's `dot` lays out `shipyard graph` drawings (SVG/HTML), from Debian.
set -euo pipefail
if command -v dot >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup: graphviz is missing; install Debian's 'graphviz' package (needs root)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends graphviz >/dev/null
