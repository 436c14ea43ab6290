"""Whether a container that exited runs again, by the pod's ``restartPolicy``."""

from __future__ import annotations


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)
