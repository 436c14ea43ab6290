"""Container images built on this machine, so that no registry is ever needed.

Two images, each one layer in an OCI image layout tarball that ``ctr images import`` accepts:

- ``docker.io/library/busybox:1.35``: the host's static busybox (Debian's ``busybox-static``) with a
  symlink per applet, ``/etc/passwd`` and ``/etc/group``, ``/tmp`` and ``/var/www``;
- ``registry.k8s.io/pause:3.6``: a small static C program compiled here that sleeps until SIGTERM
  and reaps orphans, which is all a sandbox's pause container does.

Tar members have fixed owners and times, so the same inputs give the same digests; tarballs are
cached (``$VNODE_IMAGE_CACHE`` or ``~/.cache/vnode-images``) under a key of their inputs, and the
import is skipped when containerd already has the image with that digest, unpacked for the
snapshotter asked for. ``import_images`` is synchronous (it runs ``ctr``), so it can be called from
a synchronous pytest fixture as well as from a script. ``python -m integration.images import
--address SOCKET [--snapshotter X]`` is what the README's run command uses.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = "docker.io/library/busybox:1.35"
PAUSE = "registry.k8s.io/pause:3.6"
NAMESPACE = "k8s.io"
# Part of every cache key: bump it when the tarball layout written here changes.
LAYOUT_VERSION = "2"
PAUSE_SOURCE = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction on_stop = {0}, on_child = {0};
    on_stop.sa_handler = stop;
    on_child.sa_handler = reap;
    on_child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGINT, &on_stop, NULL);
    sigaction(SIGTERM, &on_stop, NULL);
    sigaction(SIGCHLD, &on_child, NULL);
    for (;;) pause();
}
"""
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = b"root:x:0:\nnobody:x:65534:\n"


def arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def cache_dir() -> Path:
    path = Path(os.environ.get("VNODE_IMAGE_CACHE", Path.home() / ".cache" / "vnode-images"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Layer:
    """A deterministic tar layer built in memory."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
        return info

    def directory(self, name: str, mode: int = 0o755) -> None:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def close(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def busybox_layer(binary: Path = Path("/bin/busybox")) -> bytes:
    applets = subprocess.run(
        [str(binary), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    layer = _Layer()
    for d in (
        "bin",
        "etc",
        "root",
        "var",
        "var/www",
        "usr",
        "usr/bin",
        "usr/sbin",
        "sbin",
        "dev",
        "proc",
        "sys",
    ):
        layer.directory(d, 0o700 if d == "root" else 0o755)
    layer.directory("tmp", 0o1777)
    layer.file("bin/busybox", binary.read_bytes(), 0o755)
    for applet in sorted(set(applets) - {"busybox"}):
        layer.symlink(f"bin/{applet}", "busybox")
    layer.file("etc/passwd", PASSWD)
    layer.file("etc/group", GROUP)
    return layer.close()


def pause_layer() -> bytes:
    """Compile the pause program in a private temp dir, so concurrent builds cannot collide."""
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is missing: install the gcc package")
    with tempfile.TemporaryDirectory(prefix="vnode-pause-") as work:
        source = Path(work) / "pause.c"
        source.write_text(PAUSE_SOURCE)
        binary = Path(work) / "pause"
        subprocess.run(
            ["gcc", "-static", "-Os", "-s", "-o", str(binary), str(source)], check=True, capture_output=True
        )
        layer = _Layer()
        layer.file("pause", binary.read_bytes(), 0o755)
        return layer.close()


@dataclass(frozen=True)
class Image:
    """A built image: its tarball, manifest digest, and the snapshot key its one layer unpacks to."""

    name: str
    tarball: Path
    manifest_digest: str
    chain_id: str


def _blob(out: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest[7:]}")
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    out.addfile(info, io.BytesIO(data))
    return digest, len(data)


def write_oci(path: Path, name: str, layer: bytes, config: dict[str, object]) -> tuple[str, str]:
    """Write an OCI image-layout tarball of a one-layer image.

    Returns the manifest digest and the layer's chain ID (for one uncompressed layer, its digest),
    which is the key of the committed snapshot once the image is unpacked.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as out:
        layer_digest, layer_size = _blob(out, layer)
        image_config = {
            "architecture": arch(),
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "vnode integration/images.py"}],
        }
        config_digest, config_size = _blob(out, json.dumps(image_config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": layer_size,
                }
            ],
        }
        manifest_digest, manifest_size = _blob(out, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": manifest_size,
                    "platform": {"architecture": arch(), "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name,
                    },
                }
            ],
        }
        for member, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", json.dumps(index)),
        ):
            raw = data if isinstance(data, bytes) else data.encode()
            info = tarfile.TarInfo(member)
            info.size, info.mtime, info.mode = len(raw), 0, 0o644
            out.addfile(info, io.BytesIO(raw))
    _write_atomically(path, buffer.getvalue())
    return manifest_digest, layer_digest


def _write_atomically(path: Path, data: bytes) -> None:
    """Write beside ``path`` and rename, so a concurrent reader never sees a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def build_images() -> list[Image]:
    """Both images as cached tarballs; rebuilt when their inputs (busybox, pause source) change."""
    cache = cache_dir()
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise RuntimeError("/bin/busybox is missing: install the busybox-static package")
    prefix = (LAYOUT_VERSION + arch()).encode()
    busybox_key = hashlib.sha256(prefix + busybox.read_bytes()).hexdigest()[:16]
    pause_key = hashlib.sha256(prefix + PAUSE_SOURCE.encode()).hexdigest()[:16]
    busybox_config: dict[str, object] = {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]}
    builds: list[tuple[str, str, Callable[..., bytes], dict[str, object]]] = [
        (BUSYBOX, busybox_key, busybox_layer, busybox_config),
        (PAUSE, pause_key, pause_layer, {"Entrypoint": ["/pause"]}),
    ]
    images = []
    for name, key, make, config in builds:
        stem = name.replace("/", "_").replace(":", "_")
        tarball = cache / f"{stem}-{key}.tar"
        meta_file = tarball.with_suffix(".json")
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            meta = None
        if meta is None or not tarball.exists():
            for stale in cache.glob(f"{stem}-*"):
                if stale.stem != tarball.stem:
                    stale.unlink(missing_ok=True)
            digest, chain_id = write_oci(tarball, name, make(), config)
            meta = {"manifest_digest": digest, "chain_id": chain_id}
            _write_atomically(meta_file, json.dumps(meta).encode())
        images.append(Image(name, tarball, meta["manifest_digest"], meta["chain_id"]))
    return images


def _ctr(address: str, *args: str) -> str:
    return subprocess.run(
        ["ctr", "--address", address, "--namespace", NAMESPACE, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def present_digests(address: str) -> dict[str, str]:
    """Image name -> manifest digest of what the containerd at ``address`` has in k8s.io."""
    out = _ctr(address, "images", "ls")
    result = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            result[fields[0]] = fields[2]
    return result


def unpacked(address: str, snapshotter: str) -> set[str]:
    """Keys of the committed snapshots of ``snapshotter``: an unpacked layer's key is its chain ID."""
    out = _ctr(address, "snapshots", "--snapshotter", snapshotter, "ls")
    return {fields[0] for fields in (line.split() for line in out.splitlines()[1:]) if fields}


def import_images(address: str, snapshotter: str = "overlayfs") -> list[str]:
    """Import both images unless present with the same digest and unpacked for ``snapshotter``.

    Synchronous: it runs ``ctr``. Unpacking at import (``--snapshotter``) means the first pod does
    not pay for it. Raises if, afterwards, containerd does not list an image by name and digest.
    Returns the names imported.
    """
    if shutil.which("ctr") is None:
        raise RuntimeError("ctr is missing: install the containerd package")
    images = build_images()
    have = present_digests(address)
    snapshots = unpacked(address, snapshotter)
    imported = []
    for image in images:
        if have.get(image.name) == image.manifest_digest and image.chain_id in snapshots:
            continue
        _ctr(address, "images", "import", "--snapshotter", snapshotter, str(image.tarball))
        imported.append(image.name)
    if imported:
        have = present_digests(address)
        wrong = [i.name for i in images if have.get(i.name) != i.manifest_digest]
        if wrong:
            raise RuntimeError(f"after import, containerd at {address} lacks {wrong}: has {have}")
    return imported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.images")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="build the images and import them into a containerd")
    imp.add_argument("--address", default="/run/containerd/containerd.sock")
    imp.add_argument("--snapshotter", default="overlayfs")
    args = parser.parse_args(argv)
    imported = import_images(args.address.removeprefix("unix://"), args.snapshotter)
    print(f"images: imported {', '.join(imported)}" if imported else "images: already present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
