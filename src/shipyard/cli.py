"""The ``shipyard`` command line: parse arguments, call the API, render the result.

Work happens in a forked child (see :mod:`shipyard.guard`) so that a native crash becomes
a clear message; errors the user can act on print one line (plus a hint) and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from shipyard import __version__
from shipyard.errors import ShipyardError

# One module per command in shipyard/commands/, each with register(subparsers); the
# command modules import their heavy machinery inside the handlers.
COMMANDS = ["inspect", "run", "freeze", "convert", "session", "transform", "quantize", "compare", "dump", "bench",
            "graph", "view", "ops", "serve", "protect", "records", "ship", "demo", "cpp", "batch"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shipyard",
        description="Take trained neural networks from training to deployment.",
    )
    parser.add_argument("--version", action="version", version=f"shipyard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"shipyard.commands.{name}").register(sub)
    for command in sub.choices.values():  # every loader reads encrypted models given the key
        command.add_argument("--key-file", dest="key_file_path", type=Path, default=None,
                             help="key for encrypted models (or set $SHIPYARD_MODEL_KEY_FILE)")
    return parser


# -- entry points ---------------------------------------------------------------------


def run(argv: list[str] | None = None) -> int:
    """Parse and execute in this process (the body of :func:`main`; tests call it directly)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.key_file_path is not None:
        os.environ["SHIPYARD_MODEL_KEY_FILE"] = str(args.key_file_path)
    from shipyard.atomic import run_scratch

    try:
        with run_scratch():
            return args.func(args)
    except ShipyardError as exc:
        print(f"shipyard: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("shipyard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except MemoryError:
        print("shipyard: out of memory", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug in shipyard: one line, and the way to see the traceback
        if _interrupted(exc):  # Ctrl-C inside an import or a class body comes back wrapped (RuntimeError)
            print("shipyard: interrupted", file=sys.stderr)
            return 130
        if os.environ.get("SHIPYARD_DEBUG"):
            raise
        print(f"shipyard: internal error: {exc.__class__.__name__}: {exc}\n"
              "  hint: run again with SHIPYARD_DEBUG=1 for the traceback, and please report it",
              file=sys.stderr)
        return 1


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is behind ``exc`` (Python wraps one raised in ``__set_name__``
    or an import hook in another exception)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the command in a crash-contained child process."""
    from shipyard.guard import run_guarded

    return run_guarded(lambda: run(argv))


if __name__ == "__main__":
    raise SystemExit(main())
