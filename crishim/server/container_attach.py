"""Attach: validate, then hand out a single-use streaming URL to the container's conmon."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase


class ContainerAttachMixin(ServicerBase):
    async def Attach(self, request: api_pb2.AttachRequest, context: Any) -> api_pb2.AttachResponse:
        url = self.runtime.streaming.attach_url(
            request.container_id, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
            tty=request.tty)
        return api_pb2.AttachResponse(url=url)
