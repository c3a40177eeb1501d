#!/usr/bin/env bash
# Helper for set-up steps (not a step: steps are *.sh): pip-no-deps.bash NAME==VERSION ...
# installs into $VENV, without their dependencies, the pins whose exact version is not there
# yet. For packages whose own pins fight the environment but whose code (or data) works in it.
set -euo pipefail
PY="${VENV:-.venv}/bin/python"
missing=$("$PY" - "$@" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        ok = version(name) == want
    except PackageNotFoundError:
        ok = False
    if not ok:
        print(pin)
PYEOF
)
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086
  bash "$(dirname "$0")/install.bash" "$PY" --no-deps $missing
fi
