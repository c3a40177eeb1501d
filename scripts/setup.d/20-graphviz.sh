#!/usr/bin/env bash
# Graphviz's `dot` lays out `shipyard graph` drawings (SVG/HTML), from Debian.
set -euo pipefail
exec bash "$(dirname "$0")/apt-install.bash" dot graphviz
