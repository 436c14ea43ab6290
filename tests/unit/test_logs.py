"""Log parsing, the containerLogs query, the inotify watcher, and reading with tail/since/follow."""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from vnode import errors
from vnode.logs import cri as cri_module
from vnode.logs.cri import ContentJoiner, LogEntry, PartialJoiner, format_timestamp, parse_line, split_lines
from vnode.logs.inotify import DirectoryWatcher
from vnode.logs.options import LogOptions, parse_log_query
from vnode.logs.reader import BLOCK, read_log, tail_offset
from vnode.provider.protocols import LogTarget

NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def cri(second: int, stream: str, text: str, tag: str = "F", frac: str = "123456789") -> bytes:
    return f"2026-11-23T10:00:{second:02d}.{frac}Z {stream} {tag} {text}\n".encode()


def target(path: Path, running: Callable[[], bool] = lambda: False) -> LogTarget:
    async def is_running() -> bool:
        return running()

    return LogTarget(path=str(path), is_running=is_running)


async def collect(path: Path, options: LogOptions) -> bytes:
    chunks: list[bytes] = []

    async def write(data: bytes) -> None:
        chunks.append(data)

    await asyncio.wait_for(read_log(target(path), options, write, poll_interval=0.05), 5)
    return b"".join(chunks)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "main" / "0.log"
    path.parent.mkdir()
    path.write_bytes(
        cri(1, "stdout", "one")
        + cri(2, "stderr", "two")
        + cri(3, "stdout", "thr", "P")
        + cri(3, "stdout", "e", "P")
        + cri(4, "stdout", "e")
        + cri(5, "stdout", "four", frac="500000000")
    )
    return path


# --- parsing -------------------------------------------------------------------------------------


def test_parse_line_nanoseconds_offsets_and_tags() -> None:
    time, stream, tag, content = parse_line(b"2026-11-23T11:00:00.123456789+01:00 stderr F boom\n")
    assert (stream, tag, content) == ("stderr", "F", b"boom\n")
    assert time == datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)
    assert time.utcoffset() == timedelta(hours=1)
    time, stream, tag, content = parse_line(b"2026-11-23T10:00:00Z stdout P:x half\n")
    assert (time, stream, tag, content) == (NOW, "stdout", "P", b"half")  # P drops the newline
    assert parse_line(b"2026-11-23T10:00:00.5-02:30 stdout F \n")[3] == b"\n"


@pytest.mark.parametrize(
    "bad",
    [
        b"garbage\n",
        b"\n",
        b"2026-11-23T10:00:00Z stdin F x\n",
        b"2026-11-23 10:00:00Z stdout F x\n",
        b"2026-11-23T10:00:00 stdout F x\n",  # no zone
        b"2026-11-23T10:00:00.1234567891Z stdout F x\n",  # ten fraction digits
        b"2026-13-23T10:00:00Z stdout F x\n",
        b"2026-11-23T10:00:00Z stdout\n",
        b'{"log":"x\\n","stream":"stdin","time":"2026-11-23T10:00:00Z"}\n',
        b'{"log":"x\\n","stream":"stdout"}\n',
        b"{not json\n",
    ],
)
def test_parse_line_rejects_malformed_lines(bad: bytes) -> None:
    with pytest.raises(errors.InvalidInput):
        parse_line(bad)


def test_parse_line_reads_docker_json() -> None:
    time, stream, tag, content = parse_line(
        b'{"log":"hi \\u00e9\\n","stream":"stderr","time":"2026-11-23T10:00:00.000000001Z"}\n'
    )
    assert (time, stream, tag, content) == (NOW, "stderr", "F", "hi \u00e9\n".encode())


def test_joiner_joins_fragments_per_stream_and_skips_bad_lines() -> None:
    joiner = PartialJoiner()
    assert joiner.feed(cri(1, "stdout", "ab", "P")) is None
    err = joiner.feed(cri(2, "stderr", "x"))
    assert err == LogEntry(NOW.replace(second=2, microsecond=123456), "stderr", b"x\n", 123456789)
    assert joiner.feed(b"not a log line\n") is None
    assert joiner.feed(cri(3, "stdout", "cd", "P")) is None
    joined = joiner.feed(cri(4, "stdout", "ef"))
    assert joined is not None and joined.content == b"abcdef\n"
    assert joined.time.second == 1 and joined.stream == "stdout"  # the first fragment's time
    again = joiner.feed(cri(5, "stdout", "gh"))
    assert again is not None and again.content == b"gh\n"
    docker = joiner.feed(b'{"log":"d\\n","stream":"stdout","time":"2026-11-23T10:00:00.5Z"}\n')
    assert docker is not None and docker.content == b"d\n" and docker.nanosecond == 500_000_000


def test_format_timestamp_trims_the_fraction_and_keeps_the_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cri_module, "FIXED_WIDTH", False)
    assert format_timestamp(NOW, 0) == "2026-11-23T10:00:00Z"
    assert format_timestamp(NOW, 120) == "2026-11-23T10:00:00.00000012Z"
    assert format_timestamp(NOW, 500_000_000) == "2026-11-23T10:00:00.5Z"
    assert format_timestamp(NOW, 123456789) == "2026-11-23T10:00:00.123456789Z"
    plus_one = NOW.astimezone(timezone(timedelta(hours=1)))
    assert format_timestamp(plus_one, 5) == "2026-11-23T11:00:00.000000005+01:00"
    minus = NOW.astimezone(timezone(-timedelta(hours=2, minutes=30)))
    assert format_timestamp(minus, 0) == "2026-11-23T07:30:00-02:30"


def test_format_timestamp_fixed_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cri_module, "FIXED_WIDTH", True)
    assert format_timestamp(NOW, 500_000_000) == "2026-11-23T10:00:00.500000000Z"


# --- the query -----------------------------------------------------------------------------------


def test_query_values() -> None:
    assert parse_log_query({}, NOW) == LogOptions()
    opts = parse_log_query(
        {"follow": "true", "tailLines": "5", "timestamps": "1", "limitBytes": "10", "previous": ""}, NOW
    )
    assert opts == LogOptions(follow=True, tail_lines=5, timestamps=True, limit_bytes=10, previous=True)
    assert parse_log_query({"follow": "FALSE", "previous": "0"}, NOW) == LogOptions()
    assert parse_log_query({"sinceSeconds": "60"}, NOW).since == NOW - timedelta(seconds=60)
    since = parse_log_query({"sinceTime": "2026-11-23T10:00:00.5+01:00"}, NOW).since
    assert since == NOW - timedelta(hours=1) + timedelta(milliseconds=500)
    assert parse_log_query({"stream": "Stderr"}, NOW).stream == "stderr"
    assert parse_log_query({"stream": "Stdout"}, NOW).stream == "stdout"
    assert parse_log_query({"stream": "All", "tailLines": "3"}, NOW) == LogOptions(tail_lines=3)
    assert parse_log_query({"tail": "7"}, NOW).tail_lines == 7
    assert parse_log_query({"tail": "all", "tailLines": "7"}, NOW).tail_lines is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"tailLines": "abc"}, "tailLines: invalid integer"),
        ({"limitBytes": "1.5"}, "limitBytes: invalid integer"),
        ({"sinceSeconds": "ten"}, "sinceSeconds: invalid integer"),
        ({"follow": "yes"}, "follow: invalid boolean"),
        ({"timestamps": "2"}, "timestamps: invalid boolean"),
        ({"previous": "no"}, "previous: invalid boolean"),
        ({"sinceTime": "yesterday"}, "invalid RFC 3339 time"),
        ({"sinceTime": "2026-11-23T10:00:00"}, "invalid RFC 3339 time"),
    ],
)
def test_query_malformed_values_are_400(query: dict[str, str], message: str) -> None:
    with pytest.raises(errors.InvalidInput, match=message) as info:
        parse_log_query(query, NOW)
    assert not isinstance(info.value, errors.Unprocessable)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"tailLines": "-1"}, "tailLines: Invalid value: -1: must be greater than or equal to 0"),
        ({"limitBytes": "0"}, "limitBytes: Invalid value: 0: must be greater than 0"),
        ({"sinceSeconds": "0"}, "sinceSeconds: Invalid value: 0: must be greater than 0"),
        (
            {"sinceSeconds": "1", "sinceTime": "2026-11-23T09:00:00Z"},
            "at most one of `sinceTime` or `sinceSeconds` may be specified",
        ),
        ({"stream": "Both"}, 'stream: Unsupported value: "Both"'),
        ({"stream": "Stdout", "tailLines": "1"}, "`tailLines` and specific `stream` are mutually exclusive"),
    ],
)
def test_query_invalid_values_are_422(query: dict[str, str], message: str) -> None:
    with pytest.raises(errors.Unprocessable) as info:
        parse_log_query(query, NOW)
    assert message in str(info.value)


def test_query_reports_every_problem_at_once() -> None:
    with pytest.raises(errors.Unprocessable) as info:
        parse_log_query({"tailLines": "-1", "limitBytes": "0"}, NOW)
    assert "tailLines" in str(info.value) and "limitBytes" in str(info.value)


# --- reading -------------------------------------------------------------------------------------


async def test_whole_file_and_stream_filter(log_file: Path) -> None:
    assert await collect(log_file, LogOptions()) == b"one\ntwo\nthree\nfour\n"
    assert await collect(log_file, LogOptions(stream="stderr")) == b"two\n"
    assert await collect(log_file, LogOptions(stream="stdout")) == b"one\nthree\nfour\n"


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (0, b""),
        (1, b"four\n"),
        (2, b"three\nfour\n"),  # the fragments of "three" come whole, not just the last one
        (3, b"two\nthree\nfour\n"),
        (4, b"one\ntwo\nthree\nfour\n"),
        (100, b"one\ntwo\nthree\nfour\n"),
    ],
)
async def test_tail_lines(log_file: Path, tail: int, expected: bytes) -> None:
    assert await collect(log_file, LogOptions(tail_lines=tail)) == expected


async def test_tail_reads_backwards_across_blocks_and_skips_an_unfinished_line(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    lines = [cri(i % 60, "stdout", f"{i:05d}" + "x" * 300) for i in range(1000)]
    path.write_bytes(b"".join(lines) + b"2026-11-23T10:00:59Z stdout F unfinis")
    assert path.stat().st_size > 4 * BLOCK
    with path.open("rb") as f:
        assert tail_offset(f, 3) == sum(map(len, lines[:-3]))
        assert tail_offset(f, 0) == sum(map(len, lines))
        assert tail_offset(f, 5000) == 0
    out = await collect(path, LogOptions(tail_lines=2))
    # tailLines counts complete lines: the one being written is left out.
    assert out == b"00998" + b"x" * 300 + b"\n00999" + b"x" * 300 + b"\n"
    # Without it, the unfinished last line is printed as it is (kubelet does the same).
    assert (await collect(path, LogOptions(limit_bytes=10**9))).endswith(b"x\nunfinis")


def test_tail_offset_of_files_without_complete_lines() -> None:
    assert tail_offset(io.BytesIO(b""), 2) == 0
    assert tail_offset(io.BytesIO(b"no newline yet"), 2) == 0
    assert tail_offset(io.BytesIO(b"no newline yet"), 0) == 0
    assert tail_offset(io.BytesIO(b"\n\n"), 1) == 1


async def test_since_timestamps_and_limit(log_file: Path) -> None:
    since = datetime(2026, 11, 23, 10, 0, 3, tzinfo=UTC)
    assert await collect(log_file, LogOptions(since=since)) == b"three\nfour\n"
    assert await collect(log_file, LogOptions(since=since + timedelta(seconds=5))) == b""
    stamped = await collect(log_file, LogOptions(timestamps=True, tail_lines=2))
    assert stamped == (b"2026-11-23T10:00:03.123456789Z three\n2026-11-23T10:00:05.500000000Z four\n")
    assert await collect(log_file, LogOptions(limit_bytes=6)) == b"one\ntw"
    assert await collect(log_file, LogOptions(limit_bytes=4, stream="stderr")) == b"two\n"
    limited = await collect(log_file, LogOptions(limit_bytes=34, timestamps=True))
    assert limited == b"2026-11-23T10:00:01.123456789Z one\n"[:34]


async def test_malformed_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(cri(1, "stdout", "a") + b"junk\n\n" + cri(2, "stdout", "b"))
    assert await collect(path, LogOptions()) == b"a\nb\n"


async def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound):
        await collect(tmp_path / "nope.log", LogOptions())
    with pytest.raises(errors.NotFound):
        await collect(tmp_path / "nope.log", LogOptions(follow=True))


class Follower:
    """A following ``read_log`` task whose output the test can wait on, without sleeping."""

    def __init__(self, path: Path, options: LogOptions) -> None:
        self.running = True
        self.received = b""
        self._changed = asyncio.Event()
        self._polled = asyncio.Event()

        async def is_running() -> bool:
            self._polled.set()
            return self.running

        self.task = asyncio.create_task(
            read_log(LogTarget(str(path), is_running), options, self._write, poll_interval=0.05)
        )

    async def _write(self, data: bytes) -> None:
        self.received += data
        self._changed.set()

    async def until(self, expected: bytes) -> None:
        async def wait() -> None:
            while not self.received.endswith(expected):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), 5)

    async def until_polled(self) -> None:
        """Until the reader has asked ``is_running`` once more: it is at EOF and idle."""

        self._polled.clear()
        await asyncio.wait_for(self._polled.wait(), 5)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


async def test_follow_streams_new_lines_and_ends_with_the_container(log_file: Path) -> None:
    follower = Follower(log_file, LogOptions(follow=True, tail_lines=1))
    await follower.until(b"four\n")
    append(log_file, cri(6, "stdout", "five"))
    await follower.until(b"five\n")
    # A line still being written is held back until its newline arrives.
    append(log_file, cri(7, "stdout", "si", "P") + b"2026-11-23T10:00:07Z stdout F x")
    await follower.until_polled()
    await follower.until_polled()
    assert follower.received == b"four\nfive\n"
    append(log_file, b"!\n")
    await follower.until(b"six!\n")
    assert not follower.task.done()
    follower.running = False
    append(log_file, cri(8, "stdout", "last words"))
    await asyncio.wait_for(follower.task, 5)
    assert follower.received == b"four\nfive\nsix!\nlast words\n"


async def test_follow_keeps_waiting_while_running_and_checks_rarely(log_file: Path) -> None:
    follower = Follower(log_file, LogOptions(follow=True, tail_lines=0))
    await follower.until_polled()
    await follower.until_polled()
    assert not follower.task.done() and follower.received == b""
    follower.running = False
    await asyncio.wait_for(follower.task, 5)
    assert follower.received == b""


async def test_follow_across_rotation(log_file: Path) -> None:
    follower = Follower(log_file, LogOptions(follow=True, tail_lines=1))
    await follower.until(b"four\n")
    # The runtime's rotation: the file is renamed, a new one is started at the same path.
    log_file.rename(log_file.with_name("0.log.20261123-100010"))
    log_file.write_bytes(cri(10, "stdout", "six"))
    await follower.until(b"six\n")
    append(log_file, cri(11, "stdout", "seven"))
    await follower.until(b"seven\n")
    follower.running = False
    await asyncio.wait_for(follower.task, 5)
    assert follower.received == b"four\nsix\nseven\n"


async def test_follow_across_truncation(log_file: Path) -> None:
    follower = Follower(log_file, LogOptions(follow=True, tail_lines=1))
    await follower.until(b"four\n")
    with log_file.open("r+b") as f:  # copytruncate: same inode, emptied, written again
        f.truncate(0)
        f.write(cri(12, "stdout", "new"))
    await follower.until(b"new\n")
    follower.running = False
    await asyncio.wait_for(follower.task, 5)
    assert follower.received == b"four\nnew\n"


async def test_follow_stops_at_the_byte_limit(log_file: Path) -> None:
    follower = Follower(log_file, LogOptions(follow=True, tail_lines=1, limit_bytes=8))
    await follower.until(b"four\n")
    append(log_file, cri(6, "stdout", "fiver"))
    await asyncio.wait_for(follower.task, 5)  # ends although the container still runs
    assert follower.received == b"four\nfiv"


# --- the watcher ---------------------------------------------------------------------------------


def is_watching(watcher: DirectoryWatcher) -> bool:
    """Read through a call, so the type checker does not narrow the property between asserts."""
    return watcher.watching


async def test_directory_watcher_wakes_on_writes_and_times_out_without(tmp_path: Path) -> None:
    watcher = DirectoryWatcher(tmp_path)
    try:
        assert is_watching(watcher)
        assert await watcher.wait(0.05) is False
        (tmp_path / "x").write_text("1")
        assert await watcher.wait(5) is True
        assert await watcher.wait(0.05) is False  # drained: the write was reported once
        (tmp_path / "x").rename(tmp_path / "y")
        assert await watcher.wait(5) is True
    finally:
        watcher.close()
    watcher.close()  # idempotent


async def test_directory_watcher_of_a_file_watches_its_directory(tmp_path: Path) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text("a")
    watcher = DirectoryWatcher(manifest)
    try:
        assert watcher.path == tmp_path and is_watching(watcher)
        manifest.write_text("b")
        assert await watcher.wait(5) is True
    finally:
        watcher.close()


async def test_directory_watcher_polls_until_the_directory_exists(tmp_path: Path) -> None:
    later = tmp_path / "later"
    watcher = DirectoryWatcher(later)
    try:
        assert not is_watching(watcher)
        assert await watcher.wait(0.01) is True  # polling: always "maybe changed"
        later.mkdir()
        assert await watcher.wait(0.01) is True
        assert is_watching(watcher)
        assert await watcher.wait(0.05) is False
        later.rmdir()  # the watch goes with it: back to polling
        assert await watcher.wait(5) is True
        assert not is_watching(watcher)
    finally:
        watcher.close()


async def test_follow_drains_lines_written_as_the_container_stopped(log_file: Path) -> None:
    received: list[bytes] = []

    async def is_running() -> bool:
        # The container's last words land just before the runtime reports it stopped.
        append(log_file, cri(9, "stdout", "bye"))
        return False

    async def write(data: bytes) -> None:
        received.append(data)

    options = LogOptions(follow=True, tail_lines=1)
    task = read_log(LogTarget(str(log_file), is_running), options, write, poll_interval=0.05)
    await asyncio.wait_for(task, 5)
    assert b"".join(received) == b"four\nbye\n"


ODD_LINES = [
    b"junk\n",
    b"\n",
    b"2026-11-23T10:00:00Z stdout F\n",  # an empty line written without its last space
    b"2026-11-23T10:00:00Z stdout F:x tagged\n",
    b"2026-11-23T10:00:00Z stderr P:y half-tagged \n",
    b"2026-13-23T10:00:00Z stdout F bad month\n",
    b"2026-11-23T10:00:00.1234567891Z stdout F ten digits\n",
    b"2026-11-23T10:00:00Z stdin F x\n",
    b'{"log":"json\\n","stream":"stderr","time":"2026-11-23T10:00:00.5Z"}\n',
    b"2026-11-23T10:00:00+02:00 stdout F carriage\rreturn\n",
]


def test_split_lines_ends_lines_at_newlines_only() -> None:
    assert split_lines(b"a\rb\nc\n") == [b"a\rb\n", b"c\n"]
    assert split_lines(b"a\nrest") == [b"a\n", b"rest"]
    assert split_lines(b"") == []


@pytest.mark.parametrize("seed", range(40))
def test_content_joiner_matches_the_full_parser(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path (no since, no timestamps) prints exactly what the line-by-line parser does,
    whatever the mix of plain lines, fragments across streams and odd lines, and wherever the
    chunks and pieces are cut."""
    rng = random.Random(seed)
    monkeypatch.setattr(cri_module, "PIECE", rng.choice([1, 40, 300, 1 << 15]))
    lines: list[bytes] = []
    for i in range(rng.randint(1, 300)):
        roll = rng.random()
        if roll < 0.1:
            lines.append(rng.choice(ODD_LINES))
        else:
            tag = "P" if roll < 0.3 else "F"
            text = "".join(rng.choices("ab ", k=rng.randint(0, 30)))
            lines.append(
                cri(i % 60, rng.choice(["stdout", "stderr"]), text, tag, frac=str(rng.randint(1, 999)))
            )
    if rng.random() < 0.3:
        lines[-1] = lines[-1].rstrip(b"\n")  # an unfinished last line, printed when not following
    expected: list[bytes] = []
    joiner = PartialJoiner()
    for line in split_lines(b"".join(lines)):
        entry = joiner.feed(line)
        if entry is not None:
            expected.append(entry.content)

    data = b"".join(lines)
    contents = ContentJoiner()
    got: list[bytes] = []
    pos = 0
    while pos < len(data):  # chunks of whole lines, as the reader hands them over
        end = data.find(b"\n", pos + rng.randint(0, 500)) + 1 or len(data)
        got += contents.feed_chunk(data[pos:end], None)
        pos = end
    assert b"".join(got) == b"".join(expected)
    stdout = ContentJoiner().feed_chunk(data, "stdout")
    assert b"".join(stdout) == b"".join(
        e.content
        for e in map(PartialJoiner().feed, split_lines(data))
        if e is not None and e.stream == "stdout"
    )


async def test_tail_is_exactly_n_lines_while_the_container_writes(tmp_path: Path) -> None:
    """Not following, a read stops where the file ended when it was opened: a writer appending
    lines meanwhile (one write per line, as containerd writes them) never adds a fourth line to
    ``tailLines=3``."""
    path = tmp_path / "fast.log"
    path.write_bytes(b"".join(cri(0, "stdout", f"seed {i}") for i in range(10)))
    stop = asyncio.Event()
    written = 0

    def writer() -> None:
        nonlocal written
        with path.open("ab", buffering=0) as f:
            while not stop.is_set():
                for _ in range(50):
                    f.write(cri(1, "stdout", f"line {written}"))
                    written += 1

    task = asyncio.create_task(asyncio.to_thread(writer))
    try:
        counts = []
        for _ in range(200):
            out = await collect(path, LogOptions(tail_lines=3))
            counts.append(out.count(b"\n"))
            assert out.endswith(b"\n")
    finally:
        stop.set()
        await task
    assert written >= 1000  # the writer really raced the reads
    assert counts == [3] * 200
