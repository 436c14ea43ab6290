"""The ``vnode`` command: ``run`` (kubelet's flag names), ``join``, ``certs``, ``status``, ``version``.

Config errors print ``vnode: config error: <field or flag>: <reason>`` and exit 2, before
anything is started. The application modules are imported only by ``run``, so ``version`` and
argument errors stay instant.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from vnode import __version__, errors
from vnode.config.help import HELP, SECTIONS
from vnode.config.loader import FIELDS, load_settings
from vnode.config.settings import Settings

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
    status = commands.add_parser(
        "status", help="summarize the node (from its root dir; with vnode running or stopped)"
    )
    status.add_argument("--root-dir", type=Path, default=Settings().root_dir)
    status.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="json: one document (see README)"
    )
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"vnode {__version__}")
        return 0
    if args.command == "status":
        return _status(args.root_dir, args.output)
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


def _status(root_dir: Path, output: str) -> int:
    """``vnode status``: see ``vnode.app.status``; exit 1 when the root dir has no store."""
    from vnode.app import status

    try:
        facts = status.gather(root_dir)
    except errors.StoreError as exc:
        print(f"vnode: {exc}", file=sys.stderr)
        return 1
    if output == "json":
        print(json.dumps(facts, indent=2))
    else:
        print(status.render(facts), end="")
    return 0
