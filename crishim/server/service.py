"""Assemble RuntimeService and ImageService from the per-RPC mixins.

Handlers are built from the schema's descriptors rather than the generated servicer base classes, so that
every RPC gets the same wrapper (domain errors to status codes, one debug log line with the duration) and
an RPC nobody implemented answers UNIMPLEMENTED with its own name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from crishim import errors
from crishim.api.runtime.v1 import api_pb2
from crishim.runtime import Runtime
from crishim.server.containers import ContainerMixins
from crishim.server.images import ImageMixins
from crishim.server.observability import ObservabilityMixins
from crishim.server.runtime_config import RuntimeConfigMixin
from crishim.server.sandboxes import SandboxMixins
from crishim.server.status import StatusMixin
from crishim.server.streaming import StreamingMixins
from crishim.server.version import VersionMixin
from crishim.telemetry import observe_rpc

log = logging.getLogger("crishim.rpc")

DETAILS_MAX_BYTES = 2048

STATUS_BY_ERROR: dict[type[errors.CrishimError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


# Each service is the union of its RPC-family mixins; a family module adds its mixins to its tuple.
RuntimeServicer = type("RuntimeServicer", (VersionMixin, StatusMixin, RuntimeConfigMixin, *SandboxMixins,
                                           *ContainerMixins, *StreamingMixins, *ObservabilityMixins), {})
ImageServicer = type("ImageServicer", ImageMixins, {})


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


def _details(message: str) -> str:
    """A status's details travel in gRPC metadata, percent-encoded (up to three bytes per byte) and
    capped at 8 KiB by clients: a longer one would reach the client as a broken stream instead."""
    raw = message.encode()
    if len(raw) <= DETAILS_MAX_BYTES:
        return message
    return raw[:DETAILS_MAX_BYTES].decode(errors="ignore") + f"… ({len(raw)} bytes)"


async def _abort_for(exc: Exception, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if isinstance(exc, errors.CrishimError):
        await context.abort(status_for(exc), _details(str(exc)))
    log.exception("%s failed unexpectedly", method)
    await context.abort(grpc.StatusCode.INTERNAL, _details(f"{method}: internal error: {exc}"))


def _unary(method: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        start = time.perf_counter()
        code = "OK"
        try:
            return await fn(request, context)
        except Exception as exc:
            code = status_for(exc).name
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort_for(exc, method, context)
        finally:
            elapsed = time.perf_counter() - start
            observe_rpc(method, code, elapsed)
            log.debug("rpc", extra={"method": method, "code": code, "ms": round(elapsed * 1000, 3)})

    return handler


def _stream(method: str, fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        start = time.perf_counter()
        code = "OK"
        try:
            async for item in fn(request, context):
                yield item
        except Exception as exc:
            code = status_for(exc).name
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort_for(exc, method, context)
        finally:
            observe_rpc(method, code, time.perf_counter() - start)

    return handler


def _unimplemented(full_name: str) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{full_name} is not implemented by crishim")

    return handler


def _method_handler(servicer: object, method: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    impl = getattr(servicer, method.name, None)
    full_name = f"{method.containing_service.full_name}/{method.name}"
    kwargs: dict[str, Any] = {
        "request_deserializer": request_cls.FromString,
        "response_serializer": response_cls.SerializeToString,
    }
    if method.server_streaming:
        if impl is None:
            return grpc.unary_stream_rpc_method_handler(_unimplemented(full_name), **kwargs)
        return grpc.unary_stream_rpc_method_handler(_stream(method.name, impl), **kwargs)
    return grpc.unary_unary_rpc_method_handler(
        _unary(method.name, impl) if impl else _unimplemented(full_name), **kwargs
    )


def generic_handler(servicer: object, service: ServiceDescriptor) -> grpc.GenericRpcHandler[Any, Any]:
    handlers = {m.name: _method_handler(servicer, m) for m in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def cri_handlers(runtime: Runtime) -> list[grpc.GenericRpcHandler[Any, Any]]:
    services = api_pb2.DESCRIPTOR.services_by_name
    return [
        generic_handler(RuntimeServicer(runtime), services["RuntimeService"]),
        generic_handler(ImageServicer(runtime), services["ImageService"]),
    ]
