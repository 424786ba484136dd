"""Value checks of the config keys: each check returns the normalised value or raises
:class:`_Bad` (the reason; the caller adds file, key and value); :class:`Field` is one table row."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping


class _Bad(Exception):
    """A value that fails a field check; the caller adds file, key and value."""


# ------------------------------------------------------------------------------------------------
# Field checks: each returns the normalised value or raises _Bad(reason).

Check = Callable[[Any], Any]


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
         hi_open: bool = False, integer: bool = False, nullable: bool = False) -> Check:
    """A number in a range. Floats also accept numeric strings, because PyYAML reads ``1e-5``
    (no dot, no exponent sign) as a string."""
    if lo is not None and hi is not None:
        rng = f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        rng = f" {'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        rng = f" {'<' if hi_open else '<='} {hi:g}"
    else:
        rng = ""
    what = ("an integer" if integer else "a number") + rng

    def check(v: Any) -> Any:
        if v is None:
            if nullable:
                return None
            raise _Bad(f"must be {what}, not null")
        if integer:
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, int) or isinstance(v, bool):
                raise _Bad(f"must be {what}")
        else:
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    raise _Bad(f"must be {what}") from None
            if not _is_num(v) or not math.isfinite(v):
                raise _Bad(f"must be {what}")
            v = float(v)
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise _Bad(f"must be {what}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise _Bad(f"must be {what}")
        return v
    return check


def _bool() -> Check:
    def check(v: Any) -> bool:
        if not isinstance(v, bool):
            raise _Bad("must be true or false")
        return v
    return check


def _str(nullable: bool = False) -> Check:
    def check(v: Any) -> Any:
        if v is None and nullable:
            return None
        if not isinstance(v, str) or not v:
            raise _Bad("must be a non-empty string" + (" or null" if nullable else ""))
        return v
    return check


def _choice(*options: Any, nullable: bool = False, explain: str = "") -> Check:
    """One of ``options``; with ``nullable``, null (and the string "None") mean None."""
    def check(v: Any) -> Any:
        if nullable and (v is None or v == "None"):
            return None
        if v not in options:
            shown = ", ".join(repr(o) for o in options) + (", null" if nullable else "")
            raise _Bad(f"must be one of {shown}{explain}")
        return v
    return check


def _list(item: Check, *, nullable: bool = False, min_len: int = 1) -> Check:
    def check(v: Any) -> Any:
        if v is None and nullable:
            return None
        if not isinstance(v, list) or len(v) < min_len:
            raise _Bad(f"must be a list of at least {min_len} value(s)" + (" or null" if nullable else ""))
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except _Bad as err:
                raise _Bad(f"item {i} ({x!r}) {err}") from None
        return out
    return check


def _valid_size(v: Any) -> Any:
    """int count >= 1, float fraction in (0, 1), or null (validation = test set)."""
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
        return v
    if isinstance(v, float) and 0.0 < v < 1.0:
        return v
    raise _Bad("must be an integer count >= 1, a fraction in (0, 1), or null")


@dataclass(frozen=True)
class Field:
    """One config key: default, check and a one-line meaning (units included)."""

    default: Any
    check: Check
    doc: str
    schema: Mapping[str, "Field"] | None = None  # a nested mapping section


_POS_INT = _num(1, integer=True)
_NONNEG_INT = _num(0, integer=True)
_FRACTION = _num(0.0, 1.0)
_INT = _num(integer=True)
_POS_NUM = _num(0.0, lo_open=True)
