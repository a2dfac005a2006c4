"""Reads the ``grpc-status-details-bin`` trailer (a ``google.rpc.Status``) for
its ``ErrorInfo`` and ``RetryInfo`` details, without googleapis-common-protos.

The three messages are declared here by their field numbers, which are all the
wire format knows of them, in a descriptor pool of their own (so they never
clash with the google.rpc modules another package may load).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

__all__ = ["StatusDetails", "parse_status_details"]

_F = descriptor_pb2.FieldDescriptorProto
_ERROR_INFO = "google.rpc.ErrorInfo"
_RETRY_INFO = "google.rpc.RetryInfo"


def _message(
    file: descriptor_pb2.FileDescriptorProto,
    name: str,
    fields: Sequence[tuple[str, int, int, str]],
    *,
    repeated: Sequence[str] = (),
) -> descriptor_pb2.DescriptorProto:
    proto = file.message_type.add(name=name)
    for field_name, number, kind, type_name in fields:
        label = _F.LABEL_REPEATED if field_name in repeated else _F.LABEL_OPTIONAL
        added = proto.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name:
            added.type_name = type_name
    return proto


def _classes() -> dict[str, type[message.Message]]:
    file = descriptor_pb2.FileDescriptorProto(
        name="loom_client/status.proto", package="loom_client.status", syntax="proto3"
    )
    pkg = ".loom_client.status."
    _message(file, "Detail", [("type_url", 1, _F.TYPE_STRING, ""), ("value", 2, _F.TYPE_BYTES, "")])
    _message(
        file,
        "Status",
        [
            ("code", 1, _F.TYPE_INT32, ""),
            ("message", 2, _F.TYPE_STRING, ""),
            ("details", 3, _F.TYPE_MESSAGE, pkg + "Detail"),
        ],
        repeated=["details"],
    )
    info = _message(
        file,
        "ErrorInfo",
        [
            ("reason", 1, _F.TYPE_STRING, ""),
            ("domain", 2, _F.TYPE_STRING, ""),
            ("metadata", 3, _F.TYPE_MESSAGE, pkg + "ErrorInfo.MetadataEntry"),
        ],
        repeated=["metadata"],
    )
    entry = info.nested_type.add(name="MetadataEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    _message(file, "Duration", [("seconds", 1, _F.TYPE_INT64, ""), ("nanos", 2, _F.TYPE_INT32, "")])
    _message(file, "RetryInfo", [("retry_delay", 1, _F.TYPE_MESSAGE, pkg + "Duration")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(pkg[1:] + name))
        for name in ("Status", "ErrorInfo", "RetryInfo")
    }


_CLASSES = _classes()


@dataclass(frozen=True, slots=True)
class StatusDetails:
    """What a failed call's status said beyond its code and message."""

    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_delay: float | None = None


def _parse(name: str, data: bytes) -> Any:
    parsed = _CLASSES[name]()
    parsed.ParseFromString(data)
    return parsed


def parse_status_details(data: bytes | None) -> StatusDetails:
    """The ErrorInfo and RetryInfo in a serialized ``google.rpc.Status``;
    empty details when there is none or the bytes do not parse."""
    if not data:
        return StatusDetails()
    try:
        status = _parse("Status", data)
        info, delay = None, None
        for detail in status.details:
            type_name = detail.type_url.rpartition("/")[2]
            if type_name == _ERROR_INFO:
                info = _parse("ErrorInfo", detail.value)
            elif type_name == _RETRY_INFO:
                retry = _parse("RetryInfo", detail.value).retry_delay
                delay = retry.seconds + retry.nanos / 1e9
    except message.DecodeError:
        return StatusDetails()
    if info is None:
        return StatusDetails(retry_delay=delay)
    return StatusDetails(info.reason, info.domain, dict(info.metadata), delay)
