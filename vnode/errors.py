"""The one exception tree of vnode.

Every layer raises these, never a third-party type: gRPC, LMDB, aiohttp and YAML errors are
translated where they enter (``raise ... from exc``), so callers catch by meaning::

    VnodeError
     +-- ConfigError          bad settings; the CLI exits 2 with ``path: reason``
     +-- InvalidInput         a bad request or a bad object (pod spec, manifest, query)   -> 400
     |    +-- Unprocessable   well-formed but failing validation (kubelet's 422 cases)    -> 422
     +-- NotFound             no such pod, container, sandbox, image, log file             -> 404
     +-- Conflict             a stale or duplicate write                                  -> 409
     +-- Expired              a list or watch from a resourceVersion the server no longer  -> 410
                              has: list again
     +-- Unauthenticated      a credential presented and rejected, or none and no anonymous -> 401
     +-- AuthorizationError   no authorization decision could be made (webhook unreachable, -> 500
                              nothing cached): fail closed
     +-- TooMany              a limit on concurrent work is reached: retry later           -> 429
     +-- Unavailable          a dependency is down (containerd, the API server)           -> 503
     +-- RuntimeFailure       the runtime refused or failed an operation                  -> 500
     +-- ProtocolError        a streaming peer spoke something that is not SPDY/3 (the
                              connection is closed)
     +-- StoreError           the LMDB store can't be opened or written
     |    +-- StoreFull        the map is full: callers degrade instead of crashing
     +-- NodeDeleted          the Node object was deleted and the config says exit (exit code 3)
     +-- CannotListen         a port is taken or not ours to bind (exit code 5): not a config
                              error, the same config may start once the port is free
     +-- JoinRefused          join: the cluster is not the one pinned, the token is wrong or unknown,
                              or the CSR was denied; nothing was written

The local API's ``ApiError`` (``vnode.api.local``) is a ``VnodeError`` carrying the exact status
code, reason and message of a metav1.Status body; it is made from the classes above at the edge.

``HTTP_STATUS`` maps each class to the status code the kubelet API answers with; the HTTP layer
looks codes up there and nowhere else.
"""

from __future__ import annotations


class VnodeError(Exception):
    """Base of every error vnode raises on purpose."""


class ConfigError(VnodeError):
    """A setting is wrong; ``path`` names the field (``kubelet.port``), ``reason`` the problem."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class InvalidInput(VnodeError):
    """The caller sent something we cannot act on."""


class Unprocessable(InvalidInput):
    """Parsed, but fails validation (the kubelet answers 422 for these)."""


class NotFound(VnodeError):
    """The named object does not exist."""


class Conflict(VnodeError):
    """The write is stale or duplicates an existing object."""


class Expired(VnodeError):
    """410 Gone: the resourceVersion asked for is older than the server keeps; list again."""


class Unauthenticated(VnodeError):
    """A credential was presented and rejected, or none was and anonymous is off (401)."""


class AuthorizationError(VnodeError):
    """No decision could be made (the webhook is unreachable and nothing is cached)."""


class ProtocolError(VnodeError):
    """The peer sent something that is not SPDY/3."""


class Unavailable(VnodeError):
    """A dependency is out of reach; retrying later may succeed."""


class RuntimeFailure(VnodeError):
    """The container runtime failed or refused an operation."""


class StoreError(VnodeError):
    """The local store cannot be opened, read or written."""


class StoreFull(StoreError):
    """The LMDB map is full; writes fail until space is reclaimed or the map grows."""


class TooMany(VnodeError):
    """A limit on concurrent work is reached (CRI ResourceExhausted, stream limits): retry later."""


class JoinRefused(VnodeError):
    """``vnode join`` will not trust this cluster or was not let in; nothing was written."""


class CannotListen(VnodeError):
    """A listener cannot bind its address; ``setting`` names the option that chose it."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting


class NodeDeleted(VnodeError):
    """The Node object was deleted from the API and ``cluster.onNodeDeleted`` is ``exit``."""


HTTP_STATUS: dict[type[VnodeError], int] = {
    Unprocessable: 422,
    InvalidInput: 400,
    NotFound: 404,
    Conflict: 409,
    Expired: 410,
    Unauthenticated: 401,
    AuthorizationError: 500,
    TooMany: 429,
    Unavailable: 503,
    RuntimeFailure: 500,
    StoreError: 500,
    ConfigError: 500,
}


def http_status(exc: VnodeError) -> int:
    """The HTTP status for ``exc``: the entry of its nearest class in ``HTTP_STATUS``."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500
