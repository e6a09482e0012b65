"""A recording CRI proxy: forwards every unary call to the real server unchanged and keeps (method, request
bytes) in order, so a test can check which requests a client sent, in which order, with which fields."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from crishim.api.runtime.v1 import api_pb2


def _raw(data: bytes) -> bytes:
    return data


class RecordingProxy(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, socket: Path, target: Path) -> None:
        self.socket = socket
        self.calls: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._upstream = grpc.insecure_channel(f"unix:{target}")
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[self])
        self._server.add_insecure_port(f"unix:{socket}")

    def start(self) -> RecordingProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(None)
        self._upstream.close()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = details.method
        forward = self._upstream.unary_unary(method, request_serializer=_raw, response_deserializer=_raw)

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.calls.append((method.rsplit("/", 1)[1], request))
            try:
                return bytes(forward(request, timeout=context.time_remaining()))
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")
                raise  # unreachable: abort raises

        return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=_raw,
                                                   response_serializer=_raw)

    def methods(self) -> list[str]:
        with self._lock:
            return [name for name, _ in self.calls]

    def requests(self, name: str) -> list[Any]:
        """The requests of one method, decoded (e.g. "RunPodSandbox" -> RunPodSandboxRequest)."""
        message: Callable[[], Any] = getattr(api_pb2, f"{name}Request")
        decoded = []
        with self._lock:
            for method, data in self.calls:
                if method == name:
                    request = message()
                    request.ParseFromString(data)
                    decoded.append(request)
        return decoded
