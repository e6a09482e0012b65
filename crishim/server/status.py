"""Status: the RuntimeReady and NetworkReady conditions kubelet polls every few seconds."""

import json
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase

NETWORK_NOT_READY_REASON = "NetworkPluginNotReady"


class StatusMixin(ServicerBase):
    async def Status(self, request: api_pb2.StatusRequest, context: Any) -> api_pb2.StatusResponse:
        network = await self.runtime.network_status()
        conditions = [
            api_pb2.RuntimeCondition(type="RuntimeReady", status=True),
            api_pb2.RuntimeCondition(
                type="NetworkReady",
                status=network.ready,
                reason="" if network.ready else NETWORK_NOT_READY_REASON,
                message="" if network.ready else f"Network plugin returns error: {network.message}",
            ),
        ]
        response = api_pb2.StatusResponse(status=api_pb2.RuntimeStatus(conditions=conditions))
        if request.verbose:
            response.info["config"] = json.dumps(self.runtime.config.as_dict())
            response.info["cni"] = json.dumps(network.info)
        return response
