"""Server reflection under both names clients use: ``grpc.reflection.v1``
(newer grpcurl, Postman, buf curl) and ``grpc.reflection.v1alpha`` (older tools)."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

__all__ = ["V1_SERVICE_NAME", "enable_reflection"]

_V1ALPHA = "grpc.reflection.v1alpha"
_V1 = "grpc.reflection.v1"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{_V1}.ServerReflection"


def enable_reflection(service_names: Iterable[str], server: aio.Server) -> None:
    """Serve reflection for ``service_names`` (and for reflection itself)
    under v1 and v1alpha.

    grpcio-reflection implements v1alpha only. The v1 protocol is the same
    messages, field for field, under another package, so the same servicer
    answers both, and v1's descriptor is v1alpha's with the package renamed
    (added to the default pool so that clients can describe it too).
    """
    _add_v1_descriptor(descriptor_pool.Default())
    servicer = reflection.aio.ReflectionServicer(
        (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
    except KeyError:
        pass
    else:
        return  # built before, by another server in this process
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = _V1
    proto.ClearField("options")  # v1alpha's language options name v1alpha's packages
    old, new = f".{_V1ALPHA}.", f".{_V1}."
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.AddSerializedFile(proto.SerializeToString())
