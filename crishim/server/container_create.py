"""CreateContainer: the pod and the image must exist; the container starts in CREATED."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.errors import FailedPrecondition, InvalidArgument, NotFound
from crishim.sandbox.model import SandboxState
from crishim.sandbox.validate import USERNS_FIELD, same_userns
from crishim.server.base import ServicerBase
from crishim.server.container_convert import spec_from_config
from crishim.server.sandbox_convert import userns_from


class ContainerCreateMixin(ServicerBase):
    async def CreateContainer(self, request: api_pb2.CreateContainerRequest,
                              context: Any) -> api_pb2.CreateContainerResponse:
        sandbox = self.runtime.sandboxes.require(request.pod_sandbox_id)
        if sandbox.state != SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is {sandbox.state}, not READY")
        spec = spec_from_config(request.config)
        if not same_userns(sandbox.spec.userns,
                           userns_from(request.config.linux.security_context.namespace_options)):
            raise InvalidArgument(f"config.linux.security_context.{USERNS_FIELD} differs from the "
                                  "pod's: a container runs in its pod's user namespace")
        image = self.runtime.images.get(request.config.image.image)
        if image is None:
            raise NotFound(f"image {request.config.image.image!r} not found: pull it first")
        container = await self.runtime.containers.create(sandbox, spec, image)
        return api_pb2.CreateContainerResponse(container_id=container.id)
