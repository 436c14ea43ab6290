"""Image references and pull policy, as the API server defaults them and CRI resolves them."""

from __future__ import annotations

import re
from typing import Any

from vnode import errors

_IMAGE_NAME = re.compile(
    r"^(?:(?P<host>[a-zA-Z0-9.-]+(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$"
)


def normalize_image(image: str) -> str:
    """A fully qualified reference (``docker.io/library/busybox:latest``), as CRI resolves names."""
    image = image.strip()
    match = _IMAGE_NAME.match(image)
    if not image or match is None:
        raise errors.InvalidInput(
            f'Failed to apply default image tag "{image}": couldn\'t parse image name "{image}": '
            "invalid reference format"
        )
    host, path, tag, digest = match.group("host", "path", "tag", "digest")
    if host is None or ("." not in host and ":" not in host and host != "localhost"):
        path = f"{host}/{path}" if host else path
        host = "docker.io"
        if "/" not in path:
            path = f"library/{path}"
    ref = f"{host}/{path}"
    if tag:
        ref += f":{tag}"
    elif not digest:
        ref += ":latest"
    if digest:
        ref += f"@{digest}"
    return ref


def default_pull_policy(image: str) -> str:
    """The API server's default ``imagePullPolicy``: Always for ``:latest`` or untagged images."""
    tagged = "@" in image or ":" in image.rsplit("/", 1)[-1]
    return "Always" if not tagged or image.endswith(":latest") else "IfNotPresent"


def image_pull_needed(container: dict[str, Any], present: bool) -> bool | None:
    """True to pull, False to use the present image, None when policy Never forbids the pull."""
    policy = container.get("imagePullPolicy") or default_pull_policy(str(container.get("image", "")))
    if policy == "Always":
        return True
    if present:
        return False
    return None if policy == "Never" else True
