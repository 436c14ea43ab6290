"""The test command's pytest progress plugin (tests/progress.py), in a pytest run of its own: the
counts, a failure said as it happens, a line from the watcher while one test keeps the run quiet,
and pytest's own failure report (with the test's output) still at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]

TESTS = """
import time


def test_fine():
    pass


def test_quiet_for_a_while():
    time.sleep(3)  # the workload: a test that takes long, during which the watcher speaks


def test_broken():
    print("what the broken test printed")
    assert 1 == 2
"""


def inner_pytest(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in ``where`` (no config of this project's) with the plugin loaded."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.progress", *args],
        cwd=where, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def test_progress_lines_in_a_run(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(TESTS)
    done = inner_pytest(tmp_path, "--progress=1", "--progress-label=sample", "test_sample.py")
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    lines = out.splitlines()
    assert "-- sample: 3 tests" in lines
    now_in = [line for line in lines if "; now in test_sample.py::test_quiet_for_a_while (call, " in line]
    assert now_in and now_in[0].startswith("-- sample: 1/3, 1 passed, 0 failed, 0 skipped, 0 errors (")
    assert "-- sample: FAILED test_sample.py::test_broken" in lines
    final = [
        line for line in lines if line.startswith("-- sample: 3/3, 2 passed, 1 failed, 0 skipped, 0 errors")
    ]
    assert final, out
    report = out[out.index("= FAILURES =") :]
    assert "what the broken test printed" in report and "FAILED test_sample.py::test_broken" in report


def test_without_the_option_the_plugin_is_silent(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    done = inner_pytest(tmp_path, "test_one.py")
    assert done.returncode == 0 and "-- " not in done.stdout, done.stdout
