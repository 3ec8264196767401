"""Negative numbers as option values on torchlr's command lines (imports no torch).

argparse takes a word that starts with "-" for an option unless it is digits and a point,
so `--lr -1e-3` and `--lr -inf` said "expected one argument" instead of naming the bad
value. The benchmark scripts share this without importing torch (their peak RSS is their
own).
"""

from __future__ import annotations

import argparse
import math
import re

# A value that starts with "-" and reads as a float: -1e-3, -.5, -inf, -nan.
NEGATIVE_NUMBER = re.compile(r"^-((\d+\.?\d*|\.\d+)(e[-+]?\d+)?|inf(inity)?|nan)$",
                             re.IGNORECASE)


def read_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Make parser take any negative float as a value, as it already takes "-0.5"."""
    # argparse's own matcher, a private attribute it consults in _parse_optional.
    parser._negative_number_matcher = NEGATIVE_NUMBER  # type: ignore[attr-defined]


def float_value(text: str) -> float:
    """argparse type: float(text), refusing a finite number too large for a float by name.

    float("1e400") is inf, so a later check would say "got inf", a value nobody typed.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if math.isinf(value) and "inf" not in text.lower():
        raise argparse.ArgumentTypeError(f"{text!r} is beyond a float's range "
                                         f"(magnitude at most about 1.8e308)")
    # 1e-400 reads as 0.0, which a later check would name as "0.0": a digit other than 0
    # before the exponent says a nonzero number was typed.
    if value == 0 and re.search(r"[1-9]", re.split(r"[eE]", text, maxsplit=1)[0]):
        raise argparse.ArgumentTypeError(f"{text!r} is too small for a float "
                                         f"(magnitude at least about 5e-324), it reads as 0")
    return value
