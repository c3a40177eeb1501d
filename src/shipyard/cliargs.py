"""The one grammar of the command line (written down in docs/cli.md), in one place.

Every command builds its options from these pieces so that a word means one thing everywhere:
data is ``--inputs`` (``--input``/``-i`` are aliases), node names are ``--input-nodes`` /
``--output-nodes``, random data is ``--random [N]``, lists are comma-separated (and the option
may be repeated), outputs are ``-o``. An old spelling keeps working for one release and says
once, on stderr, what replaces it. A misspelt command, option or choice gets "did you mean".
"""
from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable

_warned: set[str] = set()


def reset_warnings() -> None:
    """Each CLI invocation warns once per deprecated spelling (tests run many in one process)."""
    _warned.clear()


def warn(message: str) -> None:
    """One ``shipyard: warning: ...`` line on stderr."""
    print(f"shipyard: warning: {message}", file=sys.stderr)


def deprecated(old: str, new: str | None) -> None:
    """The one deprecation line: ``shipyard: OLD is deprecated; use NEW`` (once per run); with no
    ``new``, the option means nothing there and is ignored."""
    if old not in _warned:
        _warned.add(old)
        print(f"shipyard: {old} is deprecated; use {new}" if new else
              f"shipyard: {old} is deprecated: it means nothing there and is ignored", file=sys.stderr)


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'x'?"`` for the closest choices (difflib), or ``""`` when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


def unknown(kind: str, word: str, choices: Iterable[str], flag: str | None = None):
    """The UsageError for a name an option does not know: did-you-mean, and the valid names."""
    from shipyard.errors import UsageError

    choices = list(choices)
    where = f"{flag} {word}: " if flag else ""
    return UsageError(f"{where}unknown {kind} '{word}'{did_you_mean(word, choices)}",
                      hint=f"{kind}s: {', '.join(choices)}")


def split_list(values: str | Iterable[str] | None) -> list[str]:
    """A list option's items: comma-separated, the option possibly repeated; blanks dropped."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [item.strip() for value in values for item in str(value).split(",") if item.strip()]


# -- argparse pieces ---------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with did-you-mean for a misspelt command or choice."""

    def _check_value(self, action, value):
        if action.choices is None or value in action.choices:
            return
        hint = did_you_mean(value, action.choices)
        if isinstance(action, argparse._SubParsersAction):
            msg = f"unknown command '{value}'{hint}"
            if not hint:
                msg += f" (commands: {', '.join(action.choices)})"
        else:
            msg = f"invalid choice '{value}'{hint} (choose from {', '.join(map(str, action.choices))})"
        raise argparse.ArgumentError(action, msg)

    def unrecognized(self, extras: list[str]) -> None:
        """Exit 2 naming the first option this (sub)command does not take, with did-you-mean
        over its own options (not the top-level usage)."""
        options = [s for a in self._actions for s in a.option_strings
                   if a.help is not argparse.SUPPRESS and s.startswith("--")]
        first = next((e for e in extras if e.startswith("-")), extras[0])
        word = first.partition("=")[0]
        if word.startswith("-"):
            self.error(f"unknown option {word}{did_you_mean(word, options)}")
        self.error(f"unexpected argument{'s' if len(extras) > 1 else ''}: {' '.join(extras)}")


class Deprecated(argparse.Action):
    """An old spelling of an option: says once what replaces it, then acts like the new one.

    ``store``: "append" (the new option is a list), "store" (a value), "true" (a flag), or
    "const" (set ``const`` whatever the value).
    """

    def __init__(self, option_strings, dest, new: str, where: str, store: str = "append", **kwargs):
        if store == "true":
            kwargs.update(nargs=0)
        kwargs.setdefault("default", argparse.SUPPRESS)
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.where, self.store = new, where, store

    def __call__(self, parser, namespace, values, option_string=None):
        deprecated(f"{option_string} in {self.where}" if self.where else option_string, self.new)
        if self.store == "append":
            items = list(getattr(namespace, self.dest, None) or [])
            items.append(values)
            setattr(namespace, self.dest, items)
        elif self.store == "true":
            setattr(namespace, self.dest, True)
        elif self.store == "const":
            setattr(namespace, self.dest, self.const)
        else:
            setattr(namespace, self.dest, values)


def add_inputs(p, help: str, required: bool = False, dest: str = "inputs") -> None:
    """Data: ``--inputs`` (aliases ``--input``, ``-i``), repeatable and comma-separated."""
    p.add_argument("--inputs", "--input", "-i", dest=dest, action="append", default=[], required=required,
                   metavar="DATA", help=help + " (comma-separated or repeated)")


def add_random(p, help: str = "random inputs with a dynamic batch dimension of N (default 1)",
               batch_alias: str | None = None) -> None:
    """Random data: ``--random [N]``; ``batch_alias`` names the command whose old ``--batch N`` meant it."""
    p.add_argument("--random", nargs="?", type=int, const=1, default=None, metavar="N", help=help)
    if batch_alias:
        p.add_argument("--batch", type=int, dest="random", action=Deprecated, new="--random N",
                       where=batch_alias, store="store")


def add_nodes(p, which: str, help: str, where: str, old: str | None = None) -> None:
    """Node names: ``--input-nodes`` / ``--output-nodes`` (comma-separated, repeatable); ``old``
    is the deprecated spelling this command used before."""
    dest = f"{which}_nodes"
    p.add_argument(f"--{which}-nodes", dest=dest, action="append", default=[], metavar="NAMES", help=help)
    if old:
        p.add_argument(old, dest=dest, action=Deprecated, new=f"--{which}-nodes", where=where)


def random_size(args) -> int:
    """N of ``--random [N]`` (1 when not given), checked."""
    from shipyard.errors import UsageError

    n = args.random if args.random is not None else 1
    if n < 1:
        raise UsageError(f"--random {n}: give at least 1 sample")
    return n


def check_inputs_or_random(args) -> None:
    from shipyard.errors import UsageError

    if getattr(args, "inputs", None) and getattr(args, "random", None) is not None:
        raise UsageError("give either --inputs or --random, not both")


def data_items(args) -> list[str]:
    """The ``--inputs`` items, commas split (a path that exists as given is kept whole)."""
    from pathlib import Path

    out = []
    for item in getattr(args, "inputs", None) or []:
        file = item.rpartition("=")[2]
        out.extend([item] if "," not in item or Path(file).exists() else split_list(item))
    return out


# -- output file names -------------------------------------------------------------------

def check_suffix(path, fmt: str) -> None:
    """Warn when ``path``'s extension says another format than the ``fmt`` written into it
    (``convert x.pb --to onnx -o f.pb`` would write ONNX into a .pb)."""
    from pathlib import Path

    from shipyard.formats import registry  # the suffixes and names of formats

    suffix = Path(path).suffix.lower()
    if not suffix or suffix not in registry.model_file_suffixes() or suffix in registry.file_suffixes(fmt):
        return
    what = registry.get(fmt).word
    own = registry.file_suffixes(fmt)
    better = f"; name it {Path(path).with_suffix(own[0]).name}" if own else "; give it a folder name"
    warn(f"{path}: writing {_article(what)} {what} model into a {suffix} file name{better}")


def _article(word: str) -> str:
    from shipyard.report.numbers import article

    return article(word)
