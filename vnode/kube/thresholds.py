"""Eviction thresholds in kubelet's ``--eviction-hard`` syntax, and reserved resources.

``memory.available<100Mi,nodefs.available<10%,...``: a signal, ``<``, and a quantity or a
percentage of the signal's capacity. The signals are kubelet's: ``memory.available``,
``nodefs.available``, ``nodefs.inodesFree``, ``imagefs.available``, ``imagefs.inodesFree`` and
``pid.available``. As with kubelet, giving ``--eviction-hard`` replaces the defaults (a signal not
listed has no threshold). ``--kube-reserved`` / ``--system-reserved``: ``cpu=100m,memory=256Mi,
ephemeral-storage=1Gi,pid=1000``. ``--eviction-soft`` takes the same syntax; each soft threshold
needs a grace period (``--eviction-soft-grace-period memory.available=1m30s``): it sets the
pressure condition at once, as a hard one does, but evicts only once crossed for that long.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from vnode import errors
from vnode.kube.quantity import milli_cpu, parse_quantity, to_bytes

SIGNALS = (
    "memory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "imagefs.inodesFree",
    "pid.available",
)
DEFAULT_HARD = (
    "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,"
    "imagefs.available<15%,imagefs.inodesFree<5%"
)
RESERVABLE = ("cpu", "memory", "ephemeral-storage", "pid")


@dataclass(frozen=True)
class Threshold:
    signal: str
    quantity: int | None = None  # an absolute amount (bytes, inodes, pids)
    percentage: Decimal | None = None  # or a fraction of capacity, 0..1
    given: str = ""  # the value as written (``100Mi``, ``10%``), for messages

    def limit(self, capacity: int) -> int:
        """The amount below which the signal is crossed, for a resource of ``capacity``."""
        if self.quantity is not None:
            return self.quantity
        assert self.percentage is not None
        return int(Decimal(capacity) * self.percentage)

    def text(self) -> str:
        if self.given:
            return f"{self.signal}<{self.given}"
        if self.percentage is not None:
            return f"{self.signal}<{(self.percentage * 100).normalize():f}%"
        return f"{self.signal}<{self.quantity}"


def parse_thresholds(text: str) -> tuple[Threshold, ...]:
    """``InvalidInput`` naming the bad entry."""
    out: dict[str, Threshold] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        signal, sep, value = item.partition("<")
        signal, value = signal.strip(), value.strip()
        if not sep:
            raise errors.InvalidInput(f"{item!r}: expected <signal><<quantity>, e.g. memory.available<100Mi")
        if signal not in SIGNALS:
            raise errors.InvalidInput(f"{item!r}: unknown signal {signal!r} (one of {', '.join(SIGNALS)})")
        if signal in out:
            raise errors.InvalidInput(f"{item!r}: {signal} given twice")
        if value.endswith("%"):
            try:
                percent = Decimal(value[:-1])
            except ArithmeticError:
                raise errors.InvalidInput(f"{item!r}: {value!r} is not a percentage") from None
            if not 0 <= percent <= 100:
                raise errors.InvalidInput(f"{item!r}: a percentage must be between 0% and 100%")
            out[signal] = Threshold(signal, percentage=percent / 100, given=value)
        else:
            amount = parse_quantity(value)
            if amount < 0:
                raise errors.InvalidInput(f"{item!r}: a threshold must not be negative")
            out[signal] = Threshold(signal, quantity=to_bytes(amount), given=value)
    return tuple(out.values())


def parse_grace_periods(text: str, parse_duration: Callable[[str], float]) -> dict[str, float]:
    """``--eviction-soft-grace-period``: ``memory.available=1m30s,nodefs.available=2m``."""
    out: dict[str, float] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        signal, sep, value = item.partition("=")
        signal = signal.strip()
        if not sep or signal not in SIGNALS:
            raise errors.InvalidInput(
                f"{item!r}: expected <signal>=<duration> for one of {', '.join(SIGNALS)}"
            )
        out[signal] = parse_duration(value.strip())
    return out


def parse_reserved(text: str) -> dict[str, int]:
    """``cpu`` in millicores, ``memory``/``ephemeral-storage`` in bytes, ``pid`` as a count."""
    out: dict[str, int] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in RESERVABLE:
            raise errors.InvalidInput(
                f"{item!r}: expected <resource>=<quantity> for one of {', '.join(RESERVABLE)}"
            )
        amount = parse_quantity(value.strip())
        if amount < 0:
            raise errors.InvalidInput(f"{item!r}: must not be negative")
        out[name] = milli_cpu(amount) if name == "cpu" else to_bytes(amount)
    return out
