"""The certificate profiles (``profiles.toml`` beside this module; ``certs/`` at the top of the
checkout explains them). Data only, no cryptography imported: ``keys.build`` makes a certificate
from a profile, so the local CA, the break-glass certificate, the self-signed serving pair and
``vnode certs`` cannot drift apart."""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("profiles.toml")


@dataclass(frozen=True)
class Profile:
    name: str
    validity: dt.timedelta | None = None
    renew_before: dt.timedelta | None = None
    is_ca: bool | None = None  # None: no BasicConstraints extension
    path_length: int | None = None
    key_usage: tuple[str, ...] = ()
    extended_key_usage: tuple[str, ...] = ()
    subject_key_identifier: bool = False
    signer: str = ""  # a CSR profile's signerName
    usages: tuple[str, ...] = ()  # a CSR profile's usages
    fields: dict[str, Any] = field(default_factory=dict)


@cache
def profile(name: str) -> Profile:
    raw = tomllib.loads(PATH.read_text())[name]
    days = raw.get("validity_days")
    renew = raw.get("renew_before_days")
    return Profile(
        name=name,
        validity=dt.timedelta(days=days) if days is not None else None,
        renew_before=dt.timedelta(days=renew) if renew is not None else None,
        is_ca=raw.get("is_ca"),
        path_length=raw.get("path_length"),
        key_usage=tuple(raw.get("key_usage", ())),
        extended_key_usage=tuple(raw.get("extended_key_usage", ())),
        subject_key_identifier=bool(raw.get("subject_key_identifier", False)),
        signer=str(raw.get("signer", "")),
        usages=tuple(raw.get("usages", ())),
        fields=raw,
    )
