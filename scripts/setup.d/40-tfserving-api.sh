#!/usr/bin/env bash
# TF Serving's own gRPC client stubs for the serve tests. Installed --no-deps: the package
# depends on the full `tensorflow` distribution, which would replace tensorflow-cpu.
set -euo pipefail
PY="${VENV:-.venv}/bin/python"
if "$PY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('tensorflow_serving') else 1)" 2>/dev/null; then
  exit 0
fi
bash "$(dirname "$0")/install.bash" "$PY" --no-deps "tensorflow-serving-api==2.21.*"
