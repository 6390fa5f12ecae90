"""The one settings mechanism: configs are dataclasses, named configs live in a :class:`Registry`.

A config is a (possibly nested) dataclass whose fields carry their own documentation as
attribute docstrings (a string right after the field), which is what help texts and listings
show. Both packages name their complete, ready-to-run configs in a registry — trajectory
model variants and image presets alike — and change them through one small language:

* ``override(config, {"steps": 500, "sampler.noise": 0.01})`` returns a changed copy. A key
  is a dotted path (``model.sampler.steps``), a registry alias, a field name found at exactly
  one shallowest place (``lr``), or ``parent_field`` for a field of a nested config
  (``sampler_steps``);
* a spec string ``NAME:key=value,...`` is a registered name and such overrides
  (:func:`parse_spec`); values parse as int, float, bool (true/false), None or text;
* :func:`differences` lists what a config changes against another, for listings.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from trajebm.engine.errors import UsageError

C = TypeVar("C")
Alias = str | Callable[[Any, Any], Any]
"""An alias names a dotted path, or is ``fn(config, value) -> config`` for a derived setting."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass and its bases: ``{field: first paragraph}``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                text = inspect.cleandoc(after.value.value).split("\n\n")[0]
                docs[node.target.id] = " ".join(text.split())
    return docs


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.1"`` -> 0.1, ``"true"`` -> True, ``"none"`` -> None, else the text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_overrides(text: str, where: str = "") -> dict[str, Any]:
    """``"a=1,b=x"`` -> ``{"a": 1, "b": "x"}`` (values by :func:`parse_value`)."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"{where or text}: expected key=value, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """A spec ``NAME[:key=value,...]`` as (NAME, overrides)."""
    name, _, rest = spec.partition(":")
    return name.strip(), parse_overrides(rest, spec)


def _is_config(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def paths(config: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every field of a nested config by its path, nested configs included (not recursed into
    values that are not configs)."""
    out: dict[tuple[str, ...], Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[(*prefix, f.name)] = value
        if _is_config(value):
            out.update(paths(value, (*prefix, f.name)))
    return out


def flatten(config: Any) -> dict[str, Any]:
    """The leaf settings of a nested config as ``{"dotted.path": value}``."""
    return {".".join(p): v for p, v in paths(config).items() if not _is_config(v)}


def differences(config: Any, base: Any) -> dict[str, Any]:
    """The leaf settings of ``config`` that differ from ``base``, by dotted path. A nested
    config of another type than ``base``'s (another model kind) is named by its ``kind`` (or
    type name), and its own settings are compared with that type's defaults."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        other = getattr(base, f.name, dataclasses.MISSING)
        if _is_config(value):
            if type(other) is not type(value):
                out[f.name] = getattr(value, "kind", None) or type(value).__name__
                other = type(value)()
            out.update({f"{f.name}.{k}": v for k, v in differences(value, other).items()})
        elif other is dataclasses.MISSING or other != value:
            out[f.name] = value
    return out


def resolve(config: Any, key: str, aliases: Mapping[str, Alias] = {}) -> tuple[str, ...] | None:
    """The path ``key`` names in ``config`` (module docstring), or None if it names nothing.

    UsageError when it names several places equally well.
    """
    alias = aliases.get(key)
    if isinstance(alias, str):
        key = alias
    found = paths(config)
    if "." in key:
        path = tuple(key.split("."))
        return path if path in found else None
    matches = [p for p in found if p[-1] == key or "_".join(p[-2:]) == key]
    if not matches:
        return None
    depth = min(len(p) for p in matches)
    best = [p for p in matches if len(p) == depth]
    exact = [p for p in best if p[-1] == key]
    best = exact or best
    if len(best) > 1:
        raise UsageError(f"{key!r} is ambiguous; name one of "
                         f"{', '.join('.'.join(p) for p in best)}")
    return best[0]


def _set(config: Any, path: tuple[str, ...], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(config, **{path[0]: value})
    inner = _set(getattr(config, path[0]), path[1:], value)
    return dataclasses.replace(config, **{path[0]: inner})


def override(config: C, overrides: Mapping[str, Any], aliases: Mapping[str, Alias] = {},
             *, where: str = "", elsewhere: Callable[[str], bool] | None = None,
             warn: bool = True, what: str = "config") -> C:
    """A copy of ``config`` with ``overrides`` applied (keys as in the module docstring).

    A key that names nothing is a UsageError, unless ``elsewhere(key)`` says another config of
    the family has it (e.g. ``members`` for a model kind without members): then it is skipped,
    with a warning if ``warn`` (naming the config as ``what``). The configs' own checks
    (``__post_init__``) run on the result; their ValueErrors become UsageErrors naming
    ``where``.
    """
    label = f"{where}: " if where else ""
    for key, value in overrides.items():
        alias = aliases.get(key)
        try:
            if callable(alias):
                config = alias(config, value)
                continue
            path = resolve(config, key, aliases)
            if path is None and elsewhere is not None and elsewhere(key):
                if warn:
                    warnings.warn(f"{label}{key} does not apply to this {what}; ignored",
                                  stacklevel=3)
                continue
            if path is None:
                raise UsageError(f"unknown setting {key!r}")
            config = _set(config, path, value)
        except (TypeError, ValueError) as err:  # UsageError included: the configs' own checks
            raise UsageError(f"{label}{err}") from None
    return config


def _unwrap(hint: Any) -> Any:
    """The dataclass or tuple type inside ``X | None``, else the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def from_dict(cls: type[C], data: Mapping[str, Any], *, ignore: frozenset[str] = frozenset()
              ) -> C:
    """A config of type ``cls`` from a JSON-like dict: nested configs built recursively, lists
    back to tuples where the field holds a tuple. Keys in ``ignore`` are dropped; another key
    the config lacks is a TypeError."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key in ignore:
            continue
        if key not in hints:
            raise TypeError(f"{cls.__name__} has no setting {key!r}")
        kind = _unwrap(hints[key])
        if isinstance(value, Mapping) and dataclasses.is_dataclass(kind):
            value = from_dict(kind, value)
        elif isinstance(value, list) and typing.get_origin(kind) is tuple:
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    return cls(**kwargs)


class Registry(Generic[C]):
    """Named, complete configs of one family (trajectory variants, image presets).

    ``default`` is the family's plain config (what listings compare against); ``aliases`` map
    extra key names (legacy names, derived settings) for :func:`override`.
    """

    def __init__(self, what: str, default: Callable[[], C],
                 aliases: Mapping[str, Alias] | None = None) -> None:
        self.what, self.default, self.aliases = what, default, dict(aliases or {})
        self._factories: dict[str, Callable[[], C]] = {}

    def register(self, name: str, factory: Callable[[], C]) -> None:
        """Name ``factory`` (a function returning a fresh complete config)."""
        if name in self._factories:
            raise ValueError(f"{self.what} {name!r} is registered already")
        self._factories[name] = factory

    def names(self) -> list[str]:
        return list(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def known(self, key: str) -> bool:
        """Whether ``key`` names a setting of any registered config."""
        return key in self.aliases or any(
            resolve(self._factories[n](), key, self.aliases) is not None for n in self)

    def __iter__(self):
        return iter(self._factories)

    def get(self, name: str, overrides: Mapping[str, Any] | None = None, *,
            where: str | None = None) -> C:
        """A fresh copy of config ``name`` with ``overrides`` applied."""
        if name not in self._factories:
            raise UsageError(f"unknown {self.what} {name!r}; choose from {', '.join(self)}")
        return override(self._factories[name](), overrides or {}, self.aliases,
                        where=where or name, elsewhere=self.known, what=self.what)

    def spec(self, spec: str) -> C:
        """The config of a spec string ``NAME[:key=value,...]``."""
        name, overrides = parse_spec(spec)
        return self.get(name, overrides, where=spec)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each name's differences from the family's default config."""
        base = self.default()
        return {name: differences(factory(), base) for name, factory in self._factories.items()}
