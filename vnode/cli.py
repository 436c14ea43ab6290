"""The ``vnode`` command: ``run`` (kubelet's flag names), ``join``, ``certs``, ``status``, ``version``.

Config errors print ``vnode: config error: <field or flag>: <reason>`` and exit 2, before
anything is started. The application modules are imported only by ``run``, so ``version`` and
argument errors stay instant.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from vnode import __version__, errors
from vnode.config.help import HELP, SECTIONS
from vnode.config.loader import FIELDS, load_settings
from vnode.config.settings import Settings

if TYPE_CHECKING:
    from vnode.store import Store

LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vnode", description="A Kubernetes node for the edge.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="run the node in the foreground")
    _node_flags(run)
    join = commands.add_parser("join", help="join a cluster with a bootstrap token, then run the node")
    join.add_argument("servers", help="the masters' URLs, comma-separated (https://host:6443,...)")
    join.add_argument("--token", required=True, help="the bootstrap token <id>.<secret>")
    join.add_argument("--discovery-token-ca-cert-hash", action="append", default=[], metavar="sha256:HEX")
    join.add_argument("--discovery-token-unsafe-skip-ca-verification", action="store_true")
    join.add_argument("--discovery-timeout", default="5m", metavar="DURATION")
    _node_flags(join)
    from vnode.security import certs  # its heavy imports happen only when it runs

    certs.add_parser(commands)
    status = commands.add_parser("status", help="show what the node's store holds")
    status.add_argument("--root-dir", type=Path, default=Settings().root_dir)
    commands.add_parser("version", help="print the version")
    return parser


def _node_flags(parser: argparse.ArgumentParser) -> None:
    """Every config field's kubelet flag, by section, with its meaning and default (``config.help``)."""
    parser.add_argument(
        "--config", type=Path, help="YAML config file (see conf/vnode.yaml); flags override it"
    )
    groups: dict[str, Any] = {}
    for field in FIELDS:
        section = field.path.split(".", 1)[0] if "." in field.path else ""
        if section not in groups:
            groups[section] = parser.add_argument_group(SECTIONS.get(section, section))
        meaning, default = HELP[field.path]
        text = f"{meaning} (default: {default}; config: {field.path})".replace("%", "%%")
        names = [field.flag, "--v"] if field.flag == "-v" else [field.flag]
        if field.boolean:  # kubelet's boolean flags: ``--flag`` alone means true
            groups[section].add_argument(
                *names, dest=field.flag, metavar="VALUE", help=text, nargs="?", const="true"
            )
        else:
            groups[section].add_argument(*names, dest=field.flag, metavar="VALUE", help=text)


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every long flag of ``parser`` and of its subcommands."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _flags(sub)
    return found


class _Parser(argparse.ArgumentParser):
    """argparse, and a "did you mean" for a mistyped flag (Python 3.11's argparse has none)."""

    def error(self, message: str) -> NoReturn:
        match = re.match(r"unrecognized arguments: (\S+)", message)
        if match:
            given = match.group(1).split("=", 1)[0]
            known = sorted(_flags(self))
            close = difflib.get_close_matches(given, known, n=1, cutoff=0.6)
            if close:
                message = f"unrecognized argument {given}: did you mean {close[0]}?"
        super().error(message)


def configure_logging(settings: Settings) -> None:
    level = "debug" if settings.logging.verbosity >= 4 else settings.logging.level
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    for noisy in ("aiohttp.access", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    # The API client's libraries: a line per request (httpx) and per frame and header (HTTP/2);
    # vnode logs what matters of a request itself (failures, failover).
    for chatty in ("httpx", "httpcore", "h2", "hpack"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"vnode {__version__}")
        return 0
    if args.command == "status":
        return _status(args.root_dir)
    if args.command == "certs":
        from vnode.security import certs

        return certs.main(args)
    flags = {f.flag: getattr(args, f.flag) for f in FIELDS}
    try:
        settings = load_settings(args.config, flags)
    except errors.ConfigError as exc:
        print(f"vnode: config error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    if args.command == "join":
        try:
            from vnode.security.bootstrap import join_command

            settings = join_command(args, settings)
        except (errors.ConfigError, errors.JoinRefused) as exc:
            kind = "config error" if isinstance(exc, errors.ConfigError) else "join refused"
            print(f"vnode: {kind}: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, errors.ConfigError) else 1
    from vnode.app.running import run  # the application itself, only when running it

    return run(settings)


def _event_bus_status(store: Store) -> None:
    """MQTT's state in the store: persistent sessions, retained messages, the external broker's
    outbox, and the devices with their state and twins."""
    from vnode.store import layout

    sessions, retained = len(store.items(layout.MQTT_SESSIONS)), len(store.items(layout.MQTT_RETAINED))
    outbox = len(store.items(layout.MQTT_OUTBOX))
    if sessions or retained or outbox:
        print(
            f"mqtt: {sessions} persistent session(s), {retained} retained message(s), "
            f"{outbox} waiting for the external broker"
        )
    for device_id, device in store.items(layout.DEVICE_TWINS):
        twins = ", ".join(
            f"{key}={(t.get('actual') or {}).get('value', '-')}/{(t.get('expected') or {}).get('value', '-')}"
            for key, t in sorted((device.get("twin") or {}).items())
        )
        print(
            f"device {device_id}\t{device.get('state') or 'unknown'}\t{twins or 'no twins'} (actual/expected)"
        )


def _status(root_dir: Path) -> int:
    """What the store says: its size, whose cache it is, the link to the control plane, the
    objects kept for offline use, and the pods with their last phase. Runs beside a live node."""
    from vnode.store import Store, layout

    path = root_dir / "store"
    if not (path / "data.mdb").exists():
        print(f"no store at {path}")
        return 1
    try:
        store = Store.open_sync(path)
    except errors.StoreError as exc:
        print(f"vnode: {exc}", file=sys.stderr)
        return 1
    try:
        states: dict[str, layout.PodState] = dict(store.items(layout.PODSTATE))
        info = store.info()
        print(f"store {path}: {info['used']} of {info['map_size']} bytes used")
        owner: layout.Owner | None = store.get(layout.META, "owner")
        if owner:
            print(f"cache of node {owner.get('node')} in the cluster with CA sha256:{owner.get('caHash')}")
        link: layout.LinkState = store.get(layout.LINK, layout.LINK_STATE) or layout.LinkState()
        if link.get("offlineSince"):
            print(f"control plane: unreachable, running offline since {link['offlineSince']}")
        elif link.get("activeMaster"):
            print(f"control plane: reachable at the last heartbeat, through {link['activeMaster']}")
        waiting = [key for key, _ in store.items(layout.EVENTS) if key != layout.EVENTS_DROPPED]
        dropped = store.get(layout.EVENTS, layout.EVENTS_DROPPED) or 0
        if waiting or dropped:
            print(f"events waiting to be posted: {len(waiting)} ({dropped} dropped)")
        from vnode.security.certs import status_lines

        for line in status_lines(root_dir):
            print(line)
        _event_bus_status(store)
        kinds = Counter(key.split("/", 1)[0] for key, _ in store.items(layout.OBJECTS))
        if kinds:
            print("offline cache: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())))
        pods: list[tuple[str, layout.PodRecord]] = list(store.items(layout.PODS))
        for uid, record in pods:
            meta = record["pod"]["metadata"]
            state = states.get(uid)
            status = state.get("status") if state is not None else None
            phase = (status or {}).get("phase", "Pending")
            line = f"{meta.get('namespace', 'default')}/{meta['name']}\t{phase}\t{record['source']}"
            problem = state.get("problem") if state is not None else None
            if problem:
                line += f"\tsync failing since {problem['since']}: {problem['message']}"
            print(line)
    finally:
        store.close_sync()
    return 0
