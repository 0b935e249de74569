"""Strict parsing of the numbers the CLI takes (``--size``, ``--repeat``, ``--array-bytes``...).

argparse's ``type=int`` refuses ``1e9``, and ``int(float(text))`` turns ``1.9e0`` into
1, ``1e-3`` into 0 and ``1e400`` or ``inf`` into an OverflowError traceback. These
parsers read the text as an exact decimal: a whole number is accepted in any notation
(``1000000000``, ``1e9``, ``1_000``), anything else (a fraction, inf, nan, a number
past the ceiling) is an ``ArgumentTypeError`` that argparse prints after the flag's
name, with the accepted range.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

# Binary suffixes of byte sizes: 1K = 1024 bytes.
BYTE_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _range_text(low: int, high: int) -> str:
    if high >= 1 << 20 and high & (high - 1) == 0:
        top = f"2**{high.bit_length() - 1}"
    elif high >= 1 << 20 and (high + 1) & high == 0:
        top = f"2**{high.bit_length()} - 1"
    else:
        top = str(high)
    return f"[{low}, {top}]"


def exact_int(text: str, *, low: int, high: int, scale: int = 1) -> int:
    """``text`` as a whole number in [low, high] (after multiplying by ``scale``).

    ValueError with the range when it is not a finite whole number or out of range.
    """
    want = f"a whole number in {_range_text(low, high)}"
    try:
        value = Decimal(text.strip().replace("_", ""))
    except (InvalidOperation, ValueError, ArithmeticError):
        raise ValueError(f"expected {want}, got {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"expected {want}, got {text!r} (not finite)")
    # Far past any ceiling: refuse before int() builds a number with a billion digits.
    if value and value.adjusted() > len(str(max(abs(low), abs(high)))) + 1:
        raise ValueError(f"expected {want}, got {text!r}")
    value *= scale
    if value != value.to_integral_value():
        raise ValueError(f"expected {want}, got {text!r} (not a whole number)")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"expected {want}, got {text!r}")
    return number


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in [low, high], ``1e9`` notation accepted."""

    def parse(text: str) -> int:
        try:
            return exact_int(text, low=low, high=high)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "whole number"  # argparse names the type in some messages
    return parse


def listed(parse: Callable[[str], object]) -> Callable[[str], list]:
    """An argparse ``type`` for ``action="extend"``: one value or several separated by
    commas (``--workers 1,2`` as ``--workers 1 --workers 2``), each read by ``parse``;
    an empty item is refused."""

    def parse_list(text: str) -> list:
        items = text.split(",")
        if any(not item.strip() for item in items):
            raise argparse.ArgumentTypeError(f"an empty item in {text!r}")
        return [parse(item.strip()) for item in items]

    parse_list.__name__ = getattr(parse, "__name__", "value")
    return parse_list


def byte_size(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: bytes as ``1G``, ``256M``, ``1.5G``, ``4096`` (K/M/G/T are
    binary; an ``iB`` or ``B`` after them is allowed), a whole number in [low, high]."""

    def parse(text: str) -> int:
        body = text.strip().replace(" ", "")
        for unit in ("iB", "ib", "B", "b"):
            if body.endswith(unit) and len(body) > len(unit):
                body = body[: -len(unit)]
                break
        scale = 1
        if body and body[-1].upper() in BYTE_SUFFIXES:
            scale = BYTE_SUFFIXES[body[-1].upper()]
            body = body[:-1]
        try:
            return exact_int(body, low=low, high=high, scale=scale)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a size in bytes such as 1G or 256M, a whole number of bytes in "
                f"{_range_text(low, high)}, got {text!r}"
            ) from None

    parse.__name__ = "byte size"
    return parse
