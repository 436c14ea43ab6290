"""metav1.Status bodies and the error that carries one: what the local API (and the test control
plane) answer on every failure, with the API server's reasons."""

from __future__ import annotations

from typing import Any

from vnode import errors

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    410: "Expired",
    422: "Invalid",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class ApiError(errors.VnodeError):
    """An error the API answers with a metav1.Status body."""

    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or REASONS.get(code, "InternalError")

    @classmethod
    def from_vnode(cls, exc: errors.VnodeError) -> ApiError:
        return cls(errors.http_status(exc), str(exc))

    def body(self) -> dict[str, Any]:
        return status_body(self.code, self.reason, self.message)


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A metav1.Status failure, as the API server answers errors (the test control plane too)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def not_found(plural: str, name: str) -> ApiError:
    return ApiError(404, f'{plural} "{name}" not found')
