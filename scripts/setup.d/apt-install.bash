#!/usr/bin/env bash
# Helper for set-up steps (not a step: steps are *.sh): apt-install.bash COMMAND PACKAGE
# installs Debian's PACKAGE unless COMMAND is already on the PATH. Quick when done; never fails
# the set-up for want of root (it says what is missing instead).
set -euo pipefail
command=$1 package=$2
command -v "$command" >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "setup: $command is missing; install Debian's '$package' package (needs root)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "$package" >/dev/null
