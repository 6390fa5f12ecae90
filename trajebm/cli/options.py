"""The command lines' toolkit, shared by ``trajebm`` and ``imagebm``: options derived from the
config dataclasses, and running a command with one-line errors.

An option is declared once, as a field of a config dataclass with its attribute docstring
(:func:`trajebm.engine.settings.field_docs`): :func:`add_option` takes the flag's type,
choices, default and help from there, so a command only says which fields it exposes and
under which flag (``--episodes`` for ``EvalConfig.max_episodes``, ``--quiet`` for
``progress=False``). :func:`config_from` builds the config back from the parsed arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

from trajebm.engine.errors import UsageError
from trajebm.engine.settings import field_docs
from trajebm.engine.threads import THREADS_ENV, configure_threads

Command = Callable[[argparse.Namespace], "int | None"]
_UNSET = object()


def _field(cls: type, name: str) -> tuple[dataclasses.Field, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise KeyError(f"{cls.__name__} has no field {name!r}")
    return fields[name], typing.get_type_hints(cls)[name]


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _base(hint: Any) -> Any:
    """``X`` for a hint ``X | None``; ``str`` for other unions; else the hint."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _shape(hint: Any) -> tuple[Any, dict[str, Any]]:
    """The element type of a field hint and the argparse settings it implies."""
    hint = _base(hint)
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0]), {"choices": list(typing.get_args(hint))}
    if typing.get_origin(hint) in (tuple, list):
        inner = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return (inner[0] if inner else str), {"nargs": "+"}
    return hint, {}


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
               name: str, *flags: str, override: bool = False, default: Any = _UNSET,
               **settings: Any) -> None:
    """Add the option for field ``name`` of dataclass ``cls`` (flag ``--name-with-dashes``
    unless ``flags`` are given); ``settings`` go to ``add_argument`` as they are.

    The default is the field's, or ``default`` (e.g. the value in the config a command starts
    from). A boolean becomes a switch that turns its default around (``--quiet`` for
    ``progress=True`` needs its own ``help``). With ``override`` the default is None and means
    "keep the value of the named config the command starts from".
    """
    field, hint = _field(cls, name)
    if default is _UNSET:
        default = None if override else _default(field)
    doc = field_docs(cls).get(name, "")
    kind, implied = _shape(hint)
    flags = flags or (f"--{name.replace('_', '-')}",)
    if kind is bool and "nargs" not in implied:
        action = "store_false" if default else "store_true"
        parser.add_argument(*flags, dest=name, action=action, default=bool(default),
                            **{"help": doc, **settings})
        return
    if override:
        doc = f"{doc.rstrip('.')} (default: the named config's)"
    elif default is not None and not settings.get("required"):
        doc = f"{doc.rstrip('.')} (default: {_show(default)})"
    metavar = flags[0].lstrip("-").replace("-", "_").upper()
    options = {"dest": name, "type": kind, "default": default, "help": doc, "metavar": metavar,
               **implied, **settings}
    if options.get("required"):
        options.pop("default")
    if "choices" in options and "metavar" not in settings:
        options.pop("metavar")
    parser.add_argument(*flags, **options)


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value)
    return str(value)


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                names: Sequence[str], override: bool = False) -> None:
    """:func:`add_option` for each of ``names`` under its own flag."""
    for name in names:
        add_option(parser, cls, name, override=override)


def config_from(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """``cls`` built from the parsed fields it has (``extra`` added or replacing); list values
    become tuples where the field holds a tuple."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in extra or not hasattr(args, f.name) or not f.init:
            continue
        value = getattr(args, f.name)
        if isinstance(value, list) and typing.get_origin(_base(hints[f.name])) is tuple:
            value = tuple(value)
        values[f.name] = value
    try:
        return cls(**values, **extra)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None


def given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The override options (:func:`add_option` with ``override``) the user gave."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Give a console script's top-level parser ``--threads N``."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"torch CPU threads per process (default: ${THREADS_ENV}, else "
                             f"$OMP_NUM_THREADS, else 1, which never oversubscribes the cores)")


def console_parser(prog: str, description: str, register: Sequence[Callable[..., None]]
                   ) -> argparse.ArgumentParser:
    """A console script's parser: ``--threads`` and the subcommands ``register`` functions add
    (each takes the subparsers object and sets ``func`` on its parsers)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_threads_option(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in register:
        add(subparsers)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, set the torch threads, run the chosen command, and map
    :class:`UsageError` to one ``PROG: error: ...`` line and exit status 2 (warnings print as
    one ``PROG: warning: ...`` line each)."""
    args = parser.parse_args(argv)
    saved = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"{parser.prog}: warning: {message}\n"
    try:
        try:
            configure_threads(getattr(args, "threads", None))
        except ValueError as err:
            raise UsageError(str(err)) from None
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = saved


def reference(parser: argparse.ArgumentParser, width: int = 100) -> str:
    """Markdown of a console script's and every subcommand's ``--help`` at a fixed width (for
    docs/cli.md)."""
    def helps(p: argparse.ArgumentParser, title: str, level: int) -> list[str]:
        saved = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = str(width)
        try:
            text = p.format_help().rstrip()
        finally:
            if saved is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = saved
        out = [f"{'#' * level} `{title}`", "", "```", text, "```", ""]
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out += helps(sub, f"{title} {name}", level + 1)
        return out

    return "\n".join(helps(parser, parser.prog, 2))
