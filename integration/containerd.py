"""A private containerd + runc for the integration tests, under a temporary directory.

Root, state, sockets, CNI config and shim state all live under the temp dir, so the harness never
touches a containerd the machine may already run. The CRI plugin is configured as a kubelet node
would have it (``restrict_oom_score_adj``, the pause image vnode's images module builds, a bridge
CNI network for pods without hostNetwork) and the images are imported before tests start. Missing
OS packages are installed (a missing component is installed, never skipped).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from integration.images import PAUSE, import_images
from vnode.runtime.cgroups import remove_pod_cgroups

PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "busybox": "busybox-static",
    "gcc": "gcc",
    "iptables": "iptables",  # the portmap CNI plugin programs hostPort rules with it
}
CNI_DIR = Path("/usr/lib/cni")
# One lock file per network slot (bridge ``vnodetest<n>``, subnet ``10.89.<n>.0/24``), held while an
# instance runs, so that harnesses in concurrent processes never share a bridge or a subnet.
NET_LOCKS = Path("/run/vnode-harness")


def ensure_packages() -> None:
    """Install the OS packages the harness needs when they are missing (Debian, as root)."""
    missing = [pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None]
    if not (CNI_DIR / "bridge").exists():
        missing.append("containernetworking-plugins")
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env
    )


def overlay_supported(base: Path) -> bool:
    """Whether an overlay mount works on ``base``'s filesystem (not on overlay-on-overlay, say)."""
    probe = Path(tempfile.mkdtemp(dir=base))
    dirs = [probe / d for d in ("l", "u", "w", "m")]
    for d in dirs:
        d.mkdir()
    try:
        result = subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={dirs[0]},upperdir={dirs[1]},workdir={dirs[2]}",
                str(dirs[3]),
            ],
            capture_output=True,
        )
        if result.returncode != 0:
            return False
        subprocess.run(["umount", str(dirs[3])], check=False)
        return True
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def claim_network_slot() -> tuple[int, int]:
    """Lock the first free network slot; returns (slot, lock fd). The lock dies with the process."""
    NET_LOCKS.mkdir(parents=True, exist_ok=True)
    for n in range(256):
        fd = os.open(NET_LOCKS / f"net-{n}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return n, fd
    raise RuntimeError(f"all 256 harness network slots under {NET_LOCKS} are in use")


class Containerd:
    """Start with ``start()``, stop (removing every sandbox) with ``stop()``.

    Each running instance holds its own bridge and subnet (``10.89.<n>.0/24``, see
    ``claim_network_slot``), so a test can run a second containerd beside the session's, and two
    test processes can run at once, without disturbing each other.
    """

    def __init__(self, base: Path | None = None) -> None:
        self.slot_fd: int | None = None
        self.bridge = ""
        self.subnet = ""
        self.base = Path(base or tempfile.mkdtemp(prefix="vnode-containerd-"))
        self.address = str(self.base / "containerd.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.snapshotter = "overlayfs"
        self.log_file = self.base / "containerd.log"
        # Nodes whose sandboxes outlive single tests (a module fixture's): remove_sandboxes skips them.
        self.spared_nodes: set[str] = set()
        self.adopted: int | None = None  # the pid of a containerd started by someone else (adopt)

    @property
    def endpoint(self) -> str:
        return f"unix://{self.address}"

    def config(self) -> str:
        b = self.base
        return f"""version = 2
root = "{b}/root"
state = "{b}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{self.address}"

[ttrpc]
  address = "{self.address}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{b}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  max_container_log_line_size = 16384

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{self.snapshotter}"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_DIR}"
    conf_dir = "{b}/cni"
"""

    def cni_config(self) -> str:
        return f"""{{
  "cniVersion": "0.4.0",
  "name": "vnode-test",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{self.bridge}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{self.subnet}"}}]],
        "dataDir": "{self.base}/ipam"
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}},
    {{"type": "loopback"}}
  ]
}}
"""

    def prepare(self) -> Path:
        """Claim a network slot and write the config (and the CNI config) of this instance; returns
        the config's path. ``start`` calls it; a test of a script that starts containerd itself
        (``scripts/run-standalone.sh``) calls it alone, then ``adopt``s what the script started."""
        ensure_packages()
        self.base.mkdir(parents=True, exist_ok=True)
        self.snapshotter = "overlayfs" if overlay_supported(self.base) else "native"
        if self.slot_fd is None:
            n, self.slot_fd = claim_network_slot()
            self.bridge, self.subnet = f"vnodetest{n}", f"10.89.{n}.0/24"
        (self.base / "cni").mkdir(parents=True, exist_ok=True)
        (self.base / "cni" / "10-vnode-test.conflist").write_text(self.cni_config())
        config = self.base / "config.toml"
        config.write_text(self.config())
        return config

    def start(self, timeout: float = 60.0) -> None:
        config = self.prepare()
        log = self.log_file.open("ab")
        try:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config), "--log-level", "info"],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        self._wait_ready(timeout)
        import_images(self.address, self.snapshotter)

    def adopt(self, pid: int) -> None:
        """Take charge of a containerd running this instance's config that another process
        started: ``stop`` then stops it as it stops its own."""
        self.adopted = pid

    def _wait_ready(self, timeout: float) -> None:
        """Poll CRI Version until it answers: containerd is another process, no event to await."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with grpc.insecure_channel(self.endpoint) as channel:
                    api_pb2_grpc.RuntimeServiceStub(channel).Version(api_pb2.VersionRequest(), timeout=2)
                return
            except grpc.RpcError as exc:
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"containerd did not answer within {timeout}s: {last}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def running_containers(self) -> dict[str, list[str]]:
        """IDs of the running containers, by the ``io.kubernetes.pod.name`` label of their pod."""
        with grpc.insecure_channel(self.endpoint) as channel:
            runtime = api_pb2_grpc.RuntimeServiceStub(channel)
            running = api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)
            request = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(state=running))
            found: dict[str, list[str]] = {}
            for c in runtime.ListContainers(request, timeout=30).containers:
                found.setdefault(c.labels.get("io.kubernetes.pod.name", ""), []).append(c.id)
            return found

    def remove_sandboxes(self) -> int:
        """Stop and remove every pod sandbox (and so their containers) but those of
        ``spared_nodes``; returns how many."""
        with grpc.insecure_channel(self.endpoint) as channel:
            runtime = api_pb2_grpc.RuntimeServiceStub(channel)
            listed = runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items
            sandboxes = [sb for sb in listed if sb.labels.get("vnode.io/node") not in self.spared_nodes]
            for sb in sandboxes:
                with contextlib.suppress(grpc.RpcError):
                    runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sb.id), timeout=60)
                with contextlib.suppress(grpc.RpcError):
                    runtime.RemovePodSandbox(
                        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sb.id), timeout=60
                    )
                remove_pod_cgroups(sb.metadata.uid)  # vnode would have, had it removed the pod
            return len(sandboxes)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.remove_sandboxes()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.adopted is not None and process_alive(self.adopted):
            with contextlib.suppress(Exception):
                self.remove_sandboxes()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.adopted, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while process_alive(self.adopted) and time.monotonic() < deadline:
                time.sleep(0.1)  # not our child: nothing to wait on but its /proc entry
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.adopted, signal.SIGKILL)
        self._kill_shims()
        unmount_under(self.base)
        if self.bridge:
            with contextlib.suppress(FileNotFoundError):
                subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        if self.slot_fd is not None:
            os.close(self.slot_fd)
            self.slot_fd = None

    def _kill_shims(self) -> None:
        """Shims of this instance carry its socket address on their command line."""
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                cmdline = (pid_dir / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                cmdline
                and cmdline[0].endswith(b"containerd-shim-runc-v2")
                and self.address.encode() in cmdline
            ):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid_dir.name), signal.SIGKILL)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def unmount_under(base: Path) -> None:
    """Lazily unmount every mount point below ``base``, deepest first."""
    prefix = str(base) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
