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


# Commands that read no model: --key-file means nothing there (accepted, with a deprecation line, until
# the next release).
NO_MODEL_KEY = {"keygen", "demo", "records", "view"}


def build_parser() -> argparse.ArgumentParser:
    from shipyard.cliargs import Deprecated, Parser

    parser = Parser(
        prog="shipyard",
        description="Take trained neural networks from training to deployment.",
    )
    parser.add_argument("--version", action="version", version=f"shipyard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"shipyard.commands.{name}").register(sub)
    for name, command in sub.choices.items():  # every loader reads encrypted models given the key
        if name in NO_MODEL_KEY:
            command.add_argument("--key-file", dest="key_file_path", type=Path, default=None, action=Deprecated,
                                 new=None, where=name, store="store")
        else:
            command.add_argument("--key-file", dest="key_file_path", type=Path, default=None, metavar="KEY",
                                 help="key for encrypted models (or set $SHIPYARD_MODEL_KEY_FILE)")
        command.add_argument("-q", "--quiet", action="store_true",
                             help="no progress on the terminal (as SHIPYARD_PROGRESS=0)")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; an option the command does not take is reported by that command's parser, with
    did-you-mean over its own options (argparse would print the top-level usage)."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        target = parser
        while target._subparsers is not None:
            action = target._subparsers._group_actions[0]
            chosen = getattr(args, action.dest, None)
            if chosen not in action.choices:
                break
            target = action.choices[chosen]
        target.unrecognized(extras)
    return args


# -- entry points ---------------------------------------------------------------------


def run(argv: list[str] | None = None) -> int:
    """Parse and execute in this process (the body of :func:`main`; tests call it directly)."""
    from shipyard.cliargs import reset_warnings

    reset_warnings()
    parser = build_parser()
    args = _parse(parser, argv)
    key_before = os.environ.get("SHIPYARD_MODEL_KEY_FILE")
    progress_before = os.environ.get("SHIPYARD_PROGRESS")
    if getattr(args, "quiet", False):  # for this command and the processes it starts
        os.environ["SHIPYARD_PROGRESS"] = "0"
    if getattr(args, "key_file_path", None) is not None:
        # for this command only (engines' loaders and child processes read it): an in-process caller's
        # next command must not decrypt with this one's key
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
    finally:
        for name, before in (("SHIPYARD_MODEL_KEY_FILE", key_before), ("SHIPYARD_PROGRESS", progress_before)):
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before


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
