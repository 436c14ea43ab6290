"""Frees disk space under disk pressure, as kubelet's eviction manager does first: unused images.

An image is in use when any container of the runtime (this node's or not: a shared containerd's
other clients count too) was created from it; the sandbox (pause) image is always kept. Returns
the bytes the removed images took, as the runtime reported their sizes.
"""

from __future__ import annotations

import logging

from vnode import errors
from vnode.kube.images import normalize_image
from vnode.runtime.cri import CriClient

log = logging.getLogger(__name__)


class ImageReclaimer:
    def __init__(self, cri: CriClient) -> None:
        self.cri = cri
        self.removed: list[str] = []  # what was removed, newest last (for the operator and the tests)

    async def reclaim(self) -> int:
        containers = await self.cri.list_containers({})
        used = {c.image_ref for c in containers} | {c.image.image for c in containers}
        keep: set[str] = set()
        pause = await self.cri.sandbox_image()
        if pause:
            keep.add(normalize_image(pause))
            ref = await self.cri.image_ref(normalize_image(pause))
            if ref:
                keep.add(ref)
        freed = 0
        for image in await self.cri.list_images():
            names = {image.id, *image.repo_tags, *image.repo_digests}
            if names & used or names & keep:
                continue
            try:
                await self.cri.remove_image(image.id)
            except errors.NotFound:
                continue
            except errors.VnodeError as exc:
                log.warning("could not remove unused image %s: %s", image.id, exc)
                continue
            log.info("disk pressure: removed unused image %s (%s)", image.id, ", ".join(image.repo_tags))
            self.removed.append(image.id)
            freed += int(image.size)
        return freed
