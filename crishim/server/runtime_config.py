"""RuntimeConfig and UpdateRuntimeConfig."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase


class RuntimeConfigMixin(ServicerBase):
    async def RuntimeConfig(
        self, request: api_pb2.RuntimeConfigRequest, context: Any
    ) -> api_pb2.RuntimeConfigResponse:
        return api_pb2.RuntimeConfigResponse(
            linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=api_pb2.CGROUPFS)
        )

    async def UpdateRuntimeConfig(
        self, request: api_pb2.UpdateRuntimeConfigRequest, context: Any
    ) -> api_pb2.UpdateRuntimeConfigResponse:
        await self.runtime.update_pod_cidr(request.runtime_config.network_config.pod_cidr)
        return api_pb2.UpdateRuntimeConfigResponse()
