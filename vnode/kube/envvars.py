"""kubelet's ``$(VAR)`` expansion of commands, args and env values."""

from __future__ import annotations

import re

_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Defined references replaced, ``$$`` escapes to ``$``, others kept as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, text)
