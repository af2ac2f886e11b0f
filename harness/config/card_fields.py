"""Reading typed fields out of card YAML, with errors that name the file and the field.

Shared by the model, dataset and suite cards: :class:`CardError`, :func:`read_yaml`,
:class:`Fields` (one mapping read key by key) and :func:`parse_params` (a whole mapping
read into a frozen dataclass from its type hints, as reader / label policy / split rule /
builder parameters are).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class CardError(ValueError):
    """A card file is missing, malformed, or names something that does not exist."""


# libyaml's parser when PyYAML was built with it: the same documents, several times faster
# (expected-value files and card folders are read at every session start).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load_yaml(text: str | IO[str]) -> Any:
    """``yaml.safe_load`` through libyaml's parser when available.

    Raises:
        yaml.YAMLError: on malformed YAML.
    """
    return yaml.load(text, Loader=_SAFE_LOADER)


def read_yaml(path: Path) -> Any:
    """Read a YAML card file.

    Raises:
        CardError: when the file is missing or not valid YAML.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return safe_load_yaml(handle)
    except FileNotFoundError as exc:
        raise CardError(f"{path}: card file not found") from exc
    except yaml.YAMLError as exc:
        raise CardError(f"{path}: not valid YAML: {exc}") from exc


class Fields:
    """Reads typed fields from one mapping and names file + field in every error."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise CardError(f"{where}: expected a mapping, got {type(raw).__name__}")
        self.raw = raw
        self.where = where

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., choices: Any = None
    ) -> Any:
        """Return field ``key``, checked against ``kind`` (and ``choices``).

        Raises:
            CardError: when the field is missing (and has no default) or has a wrong type
                or value.
        """
        if key not in self.raw or self.raw[key] is None:
            if default is ...:
                raise CardError(f"{self.where}: missing required field '{key}'")
            return default
        value = self.raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = (
                kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            )
            raise CardError(
                f"{self.where}: field '{key}' must be {expected}, got {type(value).__name__} "
                f"({value!r})"
            )
        if choices is not None and value not in choices:
            raise CardError(
                f"{self.where}: field '{key}' is {value!r}; expected one of {', '.join(choices)}"
            )
        return value

    def sub(self, key: str, default: Any = ...) -> Fields:
        """Return the mapping under ``key`` as :class:`Fields`."""
        return Fields(self.get(key, dict, default), f"{self.where}.{key}")

    def unknown(self, allowed: set[str]) -> None:
        """Raise :class:`CardError` for any key not in ``allowed``."""
        extra = sorted(set(self.raw) - allowed)
        if extra:
            raise CardError(f"{self.where}: unknown field(s) {', '.join(extra)}")

    def str_tuple(self, key: str) -> tuple[str, ...]:
        """Return a list-of-strings field as a tuple (empty when absent)."""
        value = self.get(key, list, [])
        if not all(isinstance(v, str) for v in value):
            raise CardError(f"{self.where}: field '{key}' must be a list of strings")
        return tuple(value)


# --------------------------------------------------------------------------- typed params


class _Mismatch(Exception):
    """A value does not fit a type hint (turned into a CardError by the caller)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def parse_params(cls: type[T], raw: Mapping[str, Any] | None, where: str, prefix: str) -> T:
    """Build the frozen dataclass ``cls`` from a card mapping, checking every field's type.

    Supported hints: ``int``, ``float`` (ints accepted), ``str``, ``bool``, ``Literal[...]``,
    ``X | None``, ``tuple[X, ...]`` and fixed ``tuple[X, Y]`` (from YAML lists),
    ``dict[str, X]`` and nested dataclasses. After construction, a ``validate()`` method
    of ``cls`` (if any) may raise ``ValueError`` for constraints between fields.

    Args:
        cls: the params dataclass.
        raw: the mapping from the card (``None`` means empty).
        where: the card file, for error messages.
        prefix: the field path of the mapping in the card (e.g. ``reader``).

    Returns:
        An instance of ``cls``.

    Raises:
        CardError: ``<where>: field '<prefix>.<key>' ...`` for an unknown key, a missing
            required key, a wrong type or value, or a failed ``validate()``.
    """
    try:
        value = _dataclass(cls, {} if raw is None else raw, prefix)
    except _Mismatch as exc:
        raise CardError(f"{where}: field '{exc.field}' {exc.message}") from None
    check = getattr(value, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as exc:
            raise CardError(f"{where}: field '{prefix}': {exc}") from None
    return value


def describe_params(cls: type) -> str:
    """Return ``key: type = default`` for every field of a params dataclass, comma separated."""
    hints = get_type_hints(cls, include_extras=False)
    parts = []
    for spec in dataclasses.fields(cls):
        text = f"{spec.name}: {_hint_name(hints[spec.name])}"
        if spec.default is not dataclasses.MISSING:
            text += f" = {spec.default!r}"
        elif spec.default_factory is not dataclasses.MISSING:
            text += f" = {spec.default_factory()!r}"
        parts.append(text)
    return ", ".join(parts) or "no parameters"


def _dataclass(cls: type[T], raw: Any, path: str) -> T:
    if not isinstance(raw, Mapping):
        raise _Mismatch(path, f"must be a mapping, got {type(raw).__name__} ({raw!r})")
    hints = get_type_hints(cls)
    specs = {spec.name: spec for spec in dataclasses.fields(cls) if spec.init}
    unknown = sorted(str(key) for key in raw if key not in specs)
    if unknown:
        raise _Mismatch(
            f"{path}.{unknown[0]}",
            f"is not a parameter (known: {', '.join(specs) or 'none'})",
        )
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        field_path = f"{path}.{name}"
        if name not in raw:
            required = (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            )
            if required:
                raise _Mismatch(field_path, "is required but missing")
            continue
        values[name] = _coerce(raw[name], hints[name], field_path)
    return cls(**values)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except _Mismatch:
                continue
        raise _Mismatch(path, _wrong(value, hint))
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in args):
            return value
        choices = ", ".join(repr(choice) for choice in args)
        raise _Mismatch(path, f"must be one of {choices}, got {value!r}")
    if hint is bool or hint is str:
        if type(value) is not hint:
            raise _Mismatch(path, _wrong(value, hint))
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Mismatch(path, _wrong(value, hint))
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Mismatch(path, _wrong(value, hint))
        return float(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch(path, _wrong(value, hint))
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Mismatch(path, f"must be a list of {len(args)} items, got {value!r}")
        return tuple(
            _coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch(path, _wrong(value, hint))
        key_hint, value_hint = args or (str, Any)
        return {
            _coerce(k, key_hint, f"{path}"): _coerce(v, value_hint, f"{path}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _dataclass(hint, value, path)
    raise TypeError(f"parse_params: unsupported type hint {hint!r} at {path}")


def _wrong(value: Any, hint: Any) -> str:
    return f"must be {_hint_name(hint)}, got {type(value).__name__} ({value!r})"


def _hint_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_hint_name(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else ""
        )
    if origin is Literal:
        return "one of " + "/".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_hint_name(args[0])}"
        return f"a list of {len(args)} ({', '.join(_hint_name(a) for a in args)})"
    if origin in (dict, Mapping, typing.Mapping):
        return f"a mapping of {_hint_name(args[1]) if args else 'values'}"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))
