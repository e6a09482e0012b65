"""ImageStatus, and the CRI `Image` message the list and status RPCs share."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.errors import InvalidArgument
from crishim.image import ImageRecord
from crishim.server.base import ServicerBase


def image_message(record: ImageRecord) -> api_pb2.Image:
    message = api_pb2.Image(id=record.id, repo_tags=record.repo_tags,
                            repo_digests=record.repo_digests, size=record.size,
                            username=record.username, spec=api_pb2.ImageSpec(image=record.id))
    if record.uid is not None:
        message.uid.value = record.uid
    return message


def chain_id(diff_ids: list[str]) -> str:
    """The OCI chain id of the layer stack, which `crictl inspecti` shows as containerd does."""
    chain = ""
    for diff_id in diff_ids:
        chain = diff_id if not chain else \
            f"sha256:{hashlib.sha256(f'{chain} {diff_id}'.encode()).hexdigest()}"
    return chain


class ImageStatusMixin(ServicerBase):
    async def ImageStatus(
        self, request: api_pb2.ImageStatusRequest, context: Any
    ) -> api_pb2.ImageStatusResponse:
        if not request.image.image:
            raise InvalidArgument("ImageStatus: image.image is empty")
        record = self.runtime.images.get(request.image.image)
        if record is None:
            return api_pb2.ImageStatusResponse()
        info: dict[str, str] = {}
        if request.verbose:
            info["info"] = json.dumps({
                "chainID": chain_id([layer.diff_id for layer in record.layers]),
                "manifestDigest": record.manifest_digest,
                "imageSpec": record.spec,
            })
        return api_pb2.ImageStatusResponse(image=image_message(record), info=info)
