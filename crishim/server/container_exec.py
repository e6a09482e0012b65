"""Exec: validate, then hand out a single-use streaming URL (the stream itself is crishim.streaming's)."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase


class ContainerExecMixin(ServicerBase):
    async def Exec(self, request: api_pb2.ExecRequest, context: Any) -> api_pb2.ExecResponse:
        url = self.runtime.streaming.exec_url(
            request.container_id, list(request.cmd), stdin=request.stdin, stdout=request.stdout,
            stderr=request.stderr, tty=request.tty)
        return api_pb2.ExecResponse(url=url)
