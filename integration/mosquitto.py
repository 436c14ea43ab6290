"""A private mosquitto for the MQTT tests and benchmarks: loopback, a free port, a temp dir.

The config allows anonymous clients on ``127.0.0.1:PORT`` only and keeps no persistence file, so
the instance shares nothing with a mosquitto the machine may run. The OS packages are installed
when missing (a missing component is installed, never skipped).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARY = "/usr/sbin/mosquitto"


def ensure_packages() -> None:
    if Path(BINARY).exists() and shutil.which("mosquitto_pub") is not None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "mosquitto", "mosquitto-clients"],
        check=True,
        env=env,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    """``start`` runs it (retrying on another port if the chosen one was taken), ``stop`` ends it."""

    def __init__(self, base: Path | None = None, extra_config: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mosquitto-", dir=base))
        self.extra_config = extra_config
        self.host = "127.0.0.1"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        ensure_packages()
        for _ in range(5):
            self.port = free_port()
            conf = self.dir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} {self.host}\n"
                "allow_anonymous true\n"
                "persistence false\n"
                "user root\n"
                f"log_dest file {self.dir / 'mosquitto.log'}\n"
                "log_type error\nlog_type warning\nlog_type notice\n" + self.extra_config
            )
            with open(self.dir / "stderr", "ab") as err:  # its warning about running as root
                self.process = subprocess.Popen(
                    [BINARY, "-c", str(conf)], stdin=subprocess.DEVNULL, stderr=err
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break  # the port was taken meanwhile: try another
                try:
                    socket.create_connection((self.host, self.port), timeout=0.5).close()
                    return
                except OSError:
                    time.sleep(0.05)
            self._end()
        log = self.dir / "mosquitto.log"
        raise RuntimeError(f"mosquitto did not start: {log.read_text() if log.exists() else 'no log'}")

    def _end(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def pause(self) -> None:
        """Stop the broker, keeping its port and config for ``resume`` (a broker outage)."""
        self._end()

    def resume(self, timeout: float = 10.0) -> None:
        conf = self.dir / "mosquitto.conf"
        with open(self.dir / "stderr", "ab") as err:
            self.process = subprocess.Popen([BINARY, "-c", str(conf)], stdin=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto did not start again on port {self.port}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen again on port {self.port}")

    def stop(self) -> None:
        self._end()
        shutil.rmtree(self.dir, ignore_errors=True)
