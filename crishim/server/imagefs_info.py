"""ImageFsInfo: crictl calls it before every image command."""

import time
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase


class ImageFsInfoMixin(ServicerBase):
    async def ImageFsInfo(
        self, request: api_pb2.ImageFsInfoRequest, context: Any
    ) -> api_pb2.ImageFsInfoResponse:
        usage = api_pb2.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=api_pb2.FilesystemIdentifier(mountpoint=self.runtime.config.state_dir),
        )
        return api_pb2.ImageFsInfoResponse(image_filesystems=[usage])
