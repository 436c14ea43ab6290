"""Label and field selectors as the API server parses and applies them, and the filter of a list
or watch (namespace plus both selectors). A bad selector is ``InvalidInput`` (a 400)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vnode import errors

Requirement = tuple[str, str, tuple[str, ...]]  # (key, operator, values)
_REQUIREMENT = re.compile(
    r"\s*(?P<neg>!?)\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?\s*"
)
POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase")


def _split(text: str) -> list[str]:
    """Requirements separated by commas outside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse_selector(text: str | None, *, fields: tuple[str, ...] | None = None) -> list[Requirement]:
    """A label selector, or with ``fields`` a field selector (``=``, ``==``, ``!=`` on those fields)."""
    out: list[Requirement] = []
    for part in _split(text or ""):
        m = _REQUIREMENT.fullmatch(part)
        if m is None or (m["neg"] and (m["op"] or m["set"])):
            raise errors.InvalidInput(f"unable to parse requirement: {part.strip()!r}")
        key = m["key"]
        if fields is not None:
            if not m["op"]:
                raise errors.InvalidInput(f"invalid field selector: {part.strip()!r}")
            if key not in fields:
                raise errors.InvalidInput(f'field label not supported: "{key}"')
        if m["op"]:
            out.append((key, "!=" if m["op"] == "!=" else "=", (m["value"],)))
        elif m["set"]:
            values = tuple(v.strip() for v in m["values"].split(",") if v.strip())
            out.append((key, m["set"], values))
        else:
            out.append((key, "!" if m["neg"] else "exists", ()))
    return out


def matches(values: Mapping[str, str], requirements: list[Requirement]) -> bool:
    for key, op, wanted in requirements:
        have = values.get(key)
        if op == "=" and have != wanted[0]:
            return False
        if op == "!=" and have == wanted[0]:
            return False
        if (op == "in" and have not in wanted) or (op == "notin" and have in wanted):
            return False
        if (op == "exists" and have is None) or (op == "!" and have is not None):
            return False
    return True


def field_values(obj: dict[str, Any]) -> dict[str, str]:
    meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    return {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "status.phase": st.get("phase", ""),
    }


@dataclass(frozen=True)
class Filter:
    """What a list or watch asks for: a namespace (None: all) and the two selectors."""

    namespace: str | None
    labels: list[Requirement]
    fields: list[Requirement]

    def wants(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        return matches(meta.get("labels") or {}, self.labels) and matches(field_values(obj), self.fields)
