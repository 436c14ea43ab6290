"""Just enough of the API server's protobuf encoding to read a ``Status`` answer.

Writes whose answer vnode does not read (the Lease renewal, six a minute for ever on every node)
ask for ``application/vnd.kubernetes.protobuf``, as kubelet does: the answer is about half the
size of its JSON. Success needs only the HTTP status; a failure's ``Status`` is decoded here so
that its message still reaches the log. The messages are declared at run time from the field
numbers of ``k8s.io/apimachinery`` (``runtime.Unknown``, ``meta/v1 Status``); fields not
declared are skipped by the protobuf library, as unknown fields are.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"  # every protobuf body starts with it, then a runtime.Unknown

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_INT32 = descriptor_pb2.FieldDescriptorProto.TYPE_INT32
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE

# (message, ((field, number, type, message type or ""), ...))
_MESSAGES = (
    ("TypeMeta", (("apiVersion", 1, _STRING, ""), ("kind", 2, _STRING, ""))),
    ("Unknown", (("typeMeta", 1, _MESSAGE, "TypeMeta"), ("raw", 2, _BYTES, ""))),
    (
        "Status",
        (
            ("status", 2, _STRING, ""),
            ("message", 3, _STRING, ""),
            ("reason", 4, _STRING, ""),
            ("code", 6, _INT32, ""),
        ),
    ),
)


def _classes() -> dict[str, type[Message]]:
    package = "vnode.kubeproto"
    file = descriptor_pb2.FileDescriptorProto(name="vnode/kubeproto.proto", package=package, syntax="proto2")
    for name, fields in _MESSAGES:
        message = file.message_type.add(name=name)
        for field, number, kind, type_name in fields:
            message.field.add(
                name=field,
                number=number,
                type=kind,
                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                type_name=f".{package}.{type_name}" if type_name else None,
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        for name, _ in _MESSAGES
    }


_CLASSES = _classes()


def status_message(body: bytes) -> str | None:
    """The ``message`` of a protobuf-encoded Status; None when ``body`` is not one."""
    if not body.startswith(MAGIC):
        return None
    try:
        unknown = _CLASSES["Unknown"].FromString(body[len(MAGIC) :])
        if unknown.typeMeta.kind != "Status":  # type: ignore[attr-defined]
            return None
        status = _CLASSES["Status"].FromString(unknown.raw)  # type: ignore[attr-defined]
    except DecodeError:
        return None
    return str(status.message)  # type: ignore[attr-defined]
