"""Version: kubelet and crictl call it before anything else."""

from typing import Any

from crishim import __version__
from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase

RUNTIME_NAME = "crishim"
RUNTIME_API_VERSION = "v1"


class VersionMixin(ServicerBase):
    async def Version(self, request: api_pb2.VersionRequest, context: Any) -> api_pb2.VersionResponse:
        # The request's version is the client's API version ("0.1.0" from kubelet); any is accepted.
        return api_pb2.VersionResponse(
            version="0.1.0",
            runtime_name=RUNTIME_NAME,
            runtime_version=__version__,
            runtime_api_version=RUNTIME_API_VERSION,
        )
