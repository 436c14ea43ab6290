"""Log parsing, the containerLogs query, and reading with tail/since/limit/stream/follow."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vnode import errors
from vnode.logs.cri import PartialJoiner, parse_line
from vnode.logs.inotify import DirectoryWatcher
from vnode.logs.options import LogOptions, parse_log_query
from vnode.logs.reader import read_log
from vnode.provider.protocols import LogTarget

NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def line(second: int, stream: str, text: str, tag: str = "F") -> bytes:
    return f"2026-11-23T10:00:{second:02d}.123456789Z {stream} {tag} {text}\n".encode()


async def always(value: bool) -> bool:
    return value


def target(path: Path, running: bool = False) -> LogTarget:
    return LogTarget(path=str(path), is_running=lambda: always(running))


async def collect(path: Path, options: LogOptions, running: bool = False) -> bytes:
    chunks: list[bytes] = []

    async def write(data: bytes) -> None:
        chunks.append(data)

    await read_log(target(path, running), options, write, poll_interval=0.05)
    return b"".join(chunks)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "main" / "0.log"
    path.parent.mkdir()
    path.write_bytes(
        line(1, "stdout", "one")
        + line(2, "stderr", "two")
        + line(3, "stdout", "thr", "P")
        + line(3, "stdout", "ee")
        + line(4, "stdout", "four")
    )
    return path


def test_parse_line_keeps_nanoseconds_and_offsets() -> None:
    entry, partial = parse_line(b"2026-11-23T11:00:00.123456789+01:00 stderr F boom\n")
    assert not partial and entry.stream == "stderr" and entry.content == b"boom\n"
    assert entry.time == datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)
    assert entry.time_text == "2026-11-23T11:00:00.123456789+01:00"
    for bad in (
        b"garbage\n",
        b"2026-11-23T10:00:00Z stdin F x\n",
        b"2026-11-23T10:00:00Z stdout X x\n",
        b"nope stdout F x\n",
    ):
        with pytest.raises(errors.InvalidInput):
            parse_line(bad)


def test_joiner_joins_partials_per_stream_and_reads_docker_json() -> None:
    joiner = PartialJoiner()
    assert joiner.feed(line(1, "stdout", "ab", "P")) is None
    err = joiner.feed(line(1, "stderr", "x"))
    assert err is not None and err.content == b"x\n"
    joined = joiner.feed(line(2, "stdout", "cd"))
    assert joined is not None and joined.content == b"abcd\n" and joined.time.second == 1
    assert joiner.feed(b"not a log line\n") is None
    docker = joiner.feed(b'{"log":"hi\\n","stream":"stdout","time":"2026-11-23T10:00:00.5Z"}\n')
    assert docker is not None and docker.content == b"hi\n"


def test_query_parsing_and_its_errors() -> None:
    opts = parse_log_query({"follow": "true", "tailLines": "5", "timestamps": "1", "limitBytes": "10"}, NOW)
    assert opts == LogOptions(follow=True, tail_lines=5, timestamps=True, limit_bytes=10)
    assert parse_log_query({"sinceSeconds": "60"}, NOW).since == NOW - timedelta(seconds=60)
    assert parse_log_query({"sinceTime": "2026-11-23T09:00:00Z"}, NOW).since == NOW - timedelta(hours=1)
    assert parse_log_query({"stream": "Stderr"}, NOW).stream == "stderr"
    for query in ({"tailLines": "abc"}, {"follow": "yes"}, {"sinceTime": "yesterday"}):
        with pytest.raises(errors.InvalidInput) as info:
            parse_log_query(query, NOW)
        assert not isinstance(info.value, errors.Unprocessable)
    for query, message in (
        ({"tailLines": "-1"}, "tailLines: must be greater than or equal to 0"),
        ({"limitBytes": "0"}, "limitBytes: must be greater than 0"),
        ({"sinceSeconds": "0"}, "sinceSeconds: must be greater than 0"),
        ({"sinceSeconds": "1", "sinceTime": "2026-11-23T09:00:00Z"}, "at most one of"),
        ({"stream": "Both"}, "stream: unsupported value"),
    ):
        with pytest.raises(errors.Unprocessable, match=message):
            parse_log_query(query, NOW)


async def test_whole_tail_since_stream_timestamps_limit(log_file: Path) -> None:
    assert await collect(log_file, LogOptions()) == b"one\ntwo\nthree\nfour\n"
    assert await collect(log_file, LogOptions(tail_lines=1)) == b"four\n"
    assert await collect(log_file, LogOptions(tail_lines=2)) == b"ee\nfour\n"  # kubelet counts raw lines
    assert await collect(log_file, LogOptions(tail_lines=0)) == b""
    assert await collect(log_file, LogOptions(tail_lines=100)) == b"one\ntwo\nthree\nfour\n"
    since = datetime(2026, 11, 23, 10, 0, 3, tzinfo=UTC)
    assert await collect(log_file, LogOptions(since=since)) == b"three\nfour\n"
    assert await collect(log_file, LogOptions(stream="stderr")) == b"two\n"
    stamped = await collect(log_file, LogOptions(timestamps=True, tail_lines=1))
    assert stamped == b"2026-11-23T10:00:04.123456789Z four\n"
    assert await collect(log_file, LogOptions(limit_bytes=6)) == b"one\ntw"


async def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound):
        await collect(tmp_path / "nope.log", LogOptions())


async def test_follow_streams_new_lines_and_ends_with_the_container(log_file: Path) -> None:
    running = True
    received: list[bytes] = []
    got_first = asyncio.Event()
    got_new = asyncio.Event()

    async def is_running() -> bool:
        return running

    async def write(data: bytes) -> None:
        received.append(data)
        if b"four" in data:
            got_first.set()
        if b"five" in data:
            got_new.set()

    task = asyncio.create_task(
        read_log(
            LogTarget(str(log_file), is_running),
            LogOptions(follow=True, tail_lines=1),
            write,
            poll_interval=0.05,
        )
    )
    await asyncio.wait_for(got_first.wait(), 5)
    with log_file.open("ab") as f:
        f.write(line(5, "stdout", "five"))
    await asyncio.wait_for(got_new.wait(), 5)
    assert not task.done()
    # Rotation: the runtime renames the file and starts a new one.
    log_file.rename(log_file.with_suffix(".log.1"))
    log_file.write_bytes(line(6, "stdout", "six"))
    running = False
    await asyncio.wait_for(task, 5)
    assert b"".join(received) == b"four\nfive\nsix\n"


async def test_follow_stops_at_the_byte_limit(log_file: Path) -> None:
    data = await asyncio.wait_for(collect(log_file, LogOptions(follow=True, limit_bytes=4), running=True), 5)
    assert data == b"one\n"


async def test_directory_watcher_wakes_on_writes_only(tmp_path: Path) -> None:
    watcher = DirectoryWatcher(tmp_path)
    try:
        assert watcher.watching
        assert await watcher.wait(0.05) is False
        (tmp_path / "x").write_text("1")
        assert await watcher.wait(5) is True
        assert await watcher.wait(0.05) is False
    finally:
        watcher.close()


async def test_directory_watcher_polls_a_missing_directory(tmp_path: Path) -> None:
    watcher = DirectoryWatcher(tmp_path / "later")
    assert not watcher.watching
    (tmp_path / "later").mkdir()
    assert await watcher.wait(0.01) is True
    assert watcher.watching
    watcher.close()
