"""Kubernetes resource quantities (``100m``, ``0.5``, ``16Mi``, ``1G``, ``1e3``) as exact numbers.

The grammar is apimachinery's ``resource.Quantity``: a signed decimal number and an optional
suffix, binary-SI (Ki..Ei), decimal-SI (n, u, m, "", k, M, G, T, P, E) or a decimal exponent
(e3, E-2). Values are kept as ``Decimal`` so that ``0.1`` CPU is exactly 100 millicores; the
conversions round up, as kubelet does when it turns limits into cgroup values.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from vnode import errors

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_PATTERN = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE]?)$"
)


def parse_quantity(value: object) -> Decimal:
    """A quantity from its string (or a plain number); ``InvalidInput`` if it is not one."""
    if isinstance(value, bool):
        raise errors.InvalidInput(f"quantities must match the regular expression, got {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = str(value).strip()
    match = _PATTERN.match(text)
    if not match:
        raise errors.InvalidInput(
            f"{text!r}: quantities must match the regular expression "
            r"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:
        raise errors.InvalidInput(f"{text!r} is not a quantity") from exc
    suffix = match.group(2)
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return number.scaleb(int(suffix[1:]))
    return number * _DECIMAL[suffix]


def milli_cpu(value: object) -> int:
    """CPU in millicores, rounded up (``0.0001`` is 1m, as the API server rounds it)."""
    return math.ceil(parse_quantity(value) * 1000)


def to_bytes(value: object) -> int:
    """A memory or storage quantity in bytes, rounded up."""
    return math.ceil(parse_quantity(value))
