"""ImageFsInfo: crictl calls it before every image command, so it answers from memory."""

import time
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase


class ImageFsInfoMixin(ServicerBase):
    async def ImageFsInfo(
        self, request: api_pb2.ImageFsInfoRequest, context: Any
    ) -> api_pb2.ImageFsInfoResponse:
        usage = self.runtime.images.fs_usage()
        message = api_pb2.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=api_pb2.FilesystemIdentifier(mountpoint=usage.mountpoint),
        )
        message.used_bytes.value = usage.used_bytes
        message.inodes_used.value = usage.inodes_used
        return api_pb2.ImageFsInfoResponse(image_filesystems=[message])
