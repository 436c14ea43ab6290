"""A pytest plugin for long runs in a CI log: progress lines with counts, never minutes of silence.

Loaded with ``-p tests.progress --progress=SECONDS`` (``scripts/test.sh`` does). It prints

- ``-- <label>: N tests`` once collected;
- ``-- <label>: done/total, P passed, F failed, S skipped, E errors (elapsed)`` after a test when
  SECONDS have passed since the last line, and at the end;
- ``-- <label>: FAILED <test id>`` as soon as a test fails (its output comes in pytest's failure
  section at the end, as usual);
- ``-- <label>: <the counts as above>; now in <test id> (setup, 2m10s)`` from a watcher thread when
  one test (or a session fixture it sets up, a cluster say) keeps the run quiet for SECONDS.

Pytest's own output is unchanged otherwise: the dots, the failures with their captured output, the
short summary. The label (``--progress-label``) names the phase in the test command's log.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("progress")
    group.addoption(
        "--progress", type=float, default=0.0, metavar="SECONDS", help="progress lines every SECONDS"
    )
    group.addoption("--progress-label", default="pytest", help="the name the progress lines start with")


def pytest_configure(config: pytest.Config) -> None:
    interval = float(config.getoption("progress"))
    if interval > 0:
        config.pluginmanager.register(
            Progress(config, interval, config.getoption("progress_label")), "vnode-progress"
        )


class Progress:
    def __init__(self, config: pytest.Config, interval: float, label: str) -> None:
        self.config = config
        self.interval = interval
        self.label = label
        self.total = 0
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.last_line = self.started
        self.current: tuple[str, str, float] | None = None  # test id, phase, since
        self._lock = threading.Lock()  # the watcher thread and the tests' thread both write lines
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="pytest-progress", daemon=True)
        self._terminal = -1  # the watcher's copy of the real stdout: a running test's is captured
        self._width_after_watcher: int | None = None

    def _write(self, text: str, *, watcher: bool = False) -> None:
        """A line of its own (after a newline if pytest's dots are mid-line)."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        with self._lock:
            self.last_line = time.monotonic()
            line = f"-- {self.label}: {text}\n"
            width = reporter._tw.width_of_current_line  # pytest's column, blind to the watcher's lines
            if width and width != self._width_after_watcher:
                line = "\n" + line
            if watcher:
                os.write(self._terminal, line.encode())
                self._width_after_watcher = width  # pytest has written nothing since while it stays
            else:
                reporter.write(line, flush=True)
                self._width_after_watcher = None

    def _elapsed(self, since: float | None = None) -> str:
        seconds = int(time.monotonic() - (self.started if since is None else since))
        return f"{seconds // 60}m{seconds % 60:02d}s"

    def _summary(self) -> str:
        c = self.counts
        done = c["passed"] + c["failed"] + c["skipped"] + c["error"]
        return (
            f"{done}/{self.total}, {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped, "
            f"{c['error']} errors ({self._elapsed()})"
        )

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.total = len(session.items)
        self._write(f"{self.total} tests")
        if self._terminal < 0:
            self._terminal = os.dup(1)  # between tests, pytest's capture is suspended: the terminal
            self._watcher.start()

    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        self.current = (nodeid, "setup", time.monotonic())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.current is not None and report.when in ("setup", "call"):
            self.current = (report.nodeid, "call" if report.when == "setup" else "teardown", time.monotonic())
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome = "error" if report.when == "setup" and report.failed else report.outcome
            self.counts[outcome] += 1
            if report.failed:
                self._write(f"{'ERROR' if outcome == 'error' else 'FAILED'} {report.nodeid}")
        elif report.when == "teardown" and report.failed:
            self.counts["error"] += 1
            self._write(f"ERROR {report.nodeid} (teardown)")
        if time.monotonic() - self.last_line >= self.interval:
            self._write(self._summary())

    def pytest_runtest_logfinish(self, nodeid: str, location: object) -> None:
        self.current = None

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()
        if self._terminal >= 0:
            os.close(self._terminal)
            self._terminal = -1
        if self.total:
            self._write(self._summary())

    def _watch(self) -> None:
        """Speak up when a single test keeps the run silent (the tests' thread is busy in it)."""
        while not self._stop.wait(min(self.interval, 5.0)):
            current = self.current
            if current is None or time.monotonic() - self.last_line < self.interval:
                continue
            nodeid, phase, since = current
            self._write(f"{self._summary()}; now in {nodeid} ({phase}, {self._elapsed(since)})", watcher=True)
