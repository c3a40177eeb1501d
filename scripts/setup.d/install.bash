#!/usr/bin/env bash
# Helper for the set-up (not a step: steps are *.sh): install.bash PYTHON PIP-INSTALL-ARGS...
# installs into PYTHON's environment with uv when $UV names one (scripts/setup puts it in .venv),
# else with pip. Why uv: it downloads, unpacks and byte-compiles in parallel; the main environment
# takes 35 s instead of pip's 97 s here, the litert-torch one ~10 s instead of 72 s. Bytecode is
# compiled at install time as pip does (this machine sets PYTHONDONTWRITEBYTECODE=1, so nothing
# else would write .pyc files and every process would recompile TensorFlow).
# uv does not read pip's configuration, and the machine's package sources live there (local
# indexes, find-links, a constraints file), so they are passed on as flags; several indexes are
# merged version by version as pip does (--index-strategy unsafe-best-match). If uv fails for
# any reason the same install is run again with pip.
set -euo pipefail
py=$1
shift
if [ -n "${UV:-}" ] && [ -x "$UV" ]; then
  mapfile -t flags < <("$py" - <<'PYEOF'
import ast
import subprocess
import sys

# `pip config list` prints key='value' for every file and PIP_* variable; the environment wins
# over files, as in pip. Only the keys that choose where packages come from matter here.
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                        text=True, check=False).stdout.splitlines()
found: dict[str, str] = {}
for line in sorted(listed, key=lambda ln: ln.startswith(":env:")):
    key, sep, value = line.partition("=")
    if sep:
        found[key.rsplit(".", 1)[-1]] = ast.literal_eval(value)
options = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "find-links": "--find-links", "constraint": "--constraint"}
for key, flag in options.items():
    for value in found.get(key, "").split():
        print(flag)
        print(value)
if found.get("no-index", "").lower() in ("1", "true", "yes", "on"):
    print("--no-index")
PYEOF
)
  if "$UV" pip install --quiet --python "$py" --compile-bytecode \
      --index-strategy unsafe-best-match "${flags[@]}" "$@"; then
    exit 0
  fi
  echo "setup: uv could not install $*; trying pip" >&2
fi
"$py" -m pip install -q "$@"
