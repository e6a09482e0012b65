"""RemoveImage."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.errors import InvalidArgument
from crishim.server.base import ServicerBase


class ImageRemoveMixin(ServicerBase):
    async def RemoveImage(
        self, request: api_pb2.RemoveImageRequest, context: Any
    ) -> api_pb2.RemoveImageResponse:
        if not request.image.image:
            raise InvalidArgument("RemoveImage: image.image is empty")
        await self.runtime.images.remove(request.image.image)
        return api_pb2.RemoveImageResponse()
