"""GetContainerEvents: the lifecycle event stream kubelet's Evented PLEG follows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.errors import ResourceExhausted
from crishim.events import EventType, LifecycleEvent, SubscriberLagged
from crishim.image import ImageManager
from crishim.server import container_convert, sandbox_convert
from crishim.server.base import ServicerBase

_TYPES = {
    EventType.CREATED: api_pb2.CONTAINER_CREATED_EVENT,
    EventType.STARTED: api_pb2.CONTAINER_STARTED_EVENT,
    EventType.STOPPED: api_pb2.CONTAINER_STOPPED_EVENT,
    EventType.DELETED: api_pb2.CONTAINER_DELETED_EVENT,
}


def event_message(event: LifecycleEvent, images: ImageManager) -> api_pb2.ContainerEventResponse:
    message = api_pb2.ContainerEventResponse(
        container_id=event.container_id, container_event_type=_TYPES[event.type],
        created_at=event.created_at,
        containers_statuses=[container_convert.to_status(c, images.digested_ref(c.image_id, c.spec.image))
                             for c in event.containers])
    if event.sandbox is not None:
        message.pod_sandbox_status.CopyFrom(sandbox_convert.to_status(event.sandbox))
    return message


class ContainerEventsMixin(ServicerBase):
    async def GetContainerEvents(self, request: api_pb2.GetEventsRequest,
                                 context: Any) -> AsyncIterator[api_pb2.ContainerEventResponse]:
        subscription = self.runtime.events.subscribe()
        try:
            async for event in subscription:
                yield event_message(event, self.runtime.images)
        except SubscriberLagged as exc:
            raise ResourceExhausted(str(exc)) from exc
        finally:
            subscription.close()
