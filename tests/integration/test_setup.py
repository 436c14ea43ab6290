"""The README's run command restarts a set-up node with no network: setup skips what is installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_setup_of_an_installed_checkout_needs_no_package_index() -> None:
    """``scripts/setup.sh`` (the first step of ``scripts/run-standalone.sh``) on this set-up
    checkout, with pip's index unreachable and forbidden: it succeeds without asking for it."""
    env = {
        **os.environ,
        "VNODE_EXTRAS": "",
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": "http://127.0.0.1:9/unreachable",
        "PIP_FIND_LINKS": "",
    }
    done = subprocess.run(
        ["scripts/setup.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pip" not in done.stderr.lower(), done.stderr
