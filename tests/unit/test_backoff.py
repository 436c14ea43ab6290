"""Crash-loop back-off: kubelet's 10 s doubling to 300 s, reset after 2 x max without failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vnode.runtime.backoff import Backoff

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def test_delay_doubles_up_to_the_maximum() -> None:
    b = Backoff(10, 300)
    delays = [b.next_delay("p/c", T0 + timedelta(seconds=i)) for i in range(8)]
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]


def test_remaining_counts_from_the_given_time_or_the_last_failure() -> None:
    b = Backoff(10, 300)
    assert b.remaining("p/c", None, T0) == 0
    b.next_delay("p/c", T0)
    b.next_delay("p/c", T0)  # 20 s now
    assert b.remaining("p/c", T0, T0 + timedelta(seconds=5)) == 15
    assert b.remaining("p/c", None, T0 + timedelta(seconds=25)) == 0
    assert b.current_delay("p/c") == 20


def test_entry_expires_after_twice_the_maximum() -> None:
    b = Backoff(10, 300)
    for _ in range(5):
        b.next_delay("p/c", T0)
    assert b.current_delay("p/c") == 160
    later = T0 + timedelta(seconds=601)
    assert b.remaining("p/c", T0, later) == 0
    assert b.next_delay("p/c", later) == 10


def test_state_round_trips_and_forget_drops_a_pods_keys() -> None:
    b = Backoff(10, 300)
    b.next_delay("uid1/a", T0)
    b.next_delay("uid1/a", T0)
    b.next_delay("uid2/a", T0)
    state = b.to_state("uid1/a")
    assert state is not None
    restored = Backoff(10, 300)
    restored.restore("uid1/a", state)
    assert restored.current_delay("uid1/a") == 20
    assert restored.remaining("uid1/a", None, T0 + timedelta(seconds=1)) == 19
    restored.restore("bad", {"delay": "x"})
    assert restored.to_state("bad") is None
    b.forget("uid1/")
    assert b.to_state("uid1/a") is None
    assert b.to_state("uid2/a") is not None
