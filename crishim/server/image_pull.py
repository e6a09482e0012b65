"""PullImage."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.errors import InvalidArgument
from crishim.image import RegistryAuth
from crishim.server.base import ServicerBase


def registry_auth(config: api_pb2.AuthConfig) -> RegistryAuth | None:
    auth = RegistryAuth(username=config.username, password=config.password, auth=config.auth,
                        identity_token=config.identity_token,
                        registry_token=config.registry_token)
    return auth if auth != RegistryAuth() else None


class ImagePullMixin(ServicerBase):
    async def PullImage(
        self, request: api_pb2.PullImageRequest, context: Any
    ) -> api_pb2.PullImageResponse:
        if not request.image.image:
            raise InvalidArgument("PullImage: image.image is empty")
        record = await self.runtime.images.pull(request.image.image, registry_auth(request.auth))
        return api_pb2.PullImageResponse(image_ref=record.id)
