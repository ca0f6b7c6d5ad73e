"""Settings as text (``--set key=value``, notebook parameters) read into their declared types, and
values checked against those types: ``int``, ``float`` (finite), ``str``, ``bool``, optional and
tuple types of them. ``config`` applies these to its dataclass fields."""

from __future__ import annotations

import math
import numbers
import typing

from .errors import KitError


def unwrap(kind) -> tuple[typing.Any, bool]:
    """(the type inside ``X | None``, whether None is allowed) of an annotation."""
    args = typing.get_args(kind)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return kind, False


def parts_of(kind) -> tuple | None:
    """The element types of a ``tuple[...]`` annotation (``(X, ...)`` for any length), else None."""
    return typing.get_args(kind) if typing.get_origin(kind) is tuple else None


_WORDS = {int: "an integer", float: "a finite number", str: "a text", bool: "true or false"}


_PLURAL = {int: "integers", float: "numbers", str: "names", bool: "true/false values"}


def describe(kind) -> str:
    """What a value of annotation ``kind`` looks like, in words (for error messages)."""
    base, optional = unwrap(kind)
    parts = parts_of(base)
    if parts is None:
        text = _WORDS.get(base, getattr(base, "__name__", str(base)))
    elif len(parts) == 2 and parts[1] is Ellipsis:
        text = f"{_PLURAL[parts[0]]} separated by commas"
    else:
        text = f"{len(parts)} {_PLURAL[parts[0]]} separated by commas"
    return text + (" or none" if optional else "")


def parse_scalar(text: str, base):
    if base is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if base is int:
        return int(text)
    if base is float:
        if "/" in text:
            a, b = text.split("/")
            return float(a) / float(b)
        return float(text)
    return text


def parse_text(key: str, text: str, kind, none_is_a_value: bool = False) -> typing.Any:
    """Parse ``text`` (from ``--set`` or a notebook parameter) as the type of field ``key``.
    ``none_is_a_value``: the text "none" is a value of the field's own, not "unset"."""
    base, optional = unwrap(kind)
    if optional and none_is_a_value and text.lower() == "none":
        return "none"
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    parts = parts_of(base)
    try:
        if parts is None:
            return parse_scalar(text.strip(), base)
        items = [p.strip() for p in text.strip().strip("()[]").split(",") if p.strip()]
        return tuple(parse_scalar(p, parts[0]) for p in items)
    except (ValueError, ZeroDivisionError):
        if parts is None:
            raise KitError(f"{key}: expected a value of type {base.__name__}, got {text!r}") from None
        raise KitError(f"{key}: expected {describe(kind)}, got {text!r}") from None


def is_a(value, base) -> bool:
    """Whether ``value`` is a value of the scalar type ``base`` (an int is a float; no bool is a
    number; a float must be finite)."""
    if base is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if base is int:
        return isinstance(value, numbers.Integral)
    if base is float:
        return isinstance(value, numbers.Real) and math.isfinite(value)
    return isinstance(value, base)


def check_value(key: str, value, kind) -> None:
    """Raise a KitError naming ``key`` unless ``value`` has the field's declared type."""
    base, optional = unwrap(kind)
    if value is None and optional:
        return
    parts = parts_of(base)
    if parts is None:
        ok = is_a(value, base)
    elif not isinstance(value, (tuple, list)):
        ok = False
    elif len(parts) == 2 and parts[1] is Ellipsis:
        ok = all(is_a(v, parts[0]) for v in value)  # empty: e.g. scales=() rescales nothing
    else:
        ok = len(value) == len(parts) and all(is_a(v, t) for v, t in zip(value, parts))
    if not ok:
        raise KitError(f"{key}: expected {describe(kind)}, got {value!r} ({type(value).__name__})")


def as_declared(value, kind):
    """``value`` as the plain Python type of its field: lists become tuples, numpy numbers Python
    numbers (an int given for a float field stays an int: run folder names show it as given)."""
    base, _ = unwrap(kind)
    if value is None:
        return None
    parts = parts_of(base)
    if parts is not None:
        return tuple(as_declared(v, parts[0]) for v in value)
    if base is int or (base is float and not isinstance(value, (int, float))):
        return base(value)
    return value


def parse_sets(items: list[str] | None) -> dict:
    """``["lr=0.1", "flip=false"]`` -> ``{"lr": "0.1", "flip": "false"}`` (parsed by make_config)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise KitError(f"--set {item}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out
