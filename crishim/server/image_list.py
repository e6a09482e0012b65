"""ListImages and StreamImages."""

from collections.abc import AsyncIterator
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase
from crishim.server.image_status import image_message

# Images per StreamImages message: keeps each message far below gRPC's 4 MiB default limit.
STREAM_BATCH = 100


class ImageListMixin(ServicerBase):
    async def ListImages(
        self, request: api_pb2.ListImagesRequest, context: Any
    ) -> api_pb2.ListImagesResponse:
        records = self.runtime.images.list(request.filter.image.image)
        return api_pb2.ListImagesResponse(images=[image_message(r) for r in records])

    async def StreamImages(
        self, request: api_pb2.StreamImagesRequest, context: Any
    ) -> AsyncIterator[api_pb2.StreamImagesResponse]:
        records = self.runtime.images.list(request.filter.image.image)
        for start in range(0, len(records), STREAM_BATCH):
            batch = records[start:start + STREAM_BATCH]
            yield api_pb2.StreamImagesResponse(images=[image_message(r) for r in batch])
