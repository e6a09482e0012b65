"""The ImageService RPCs over real gRPC (in-process server) on top of a real registry."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.image import ImageManager
from tests.image_fixtures import TestImages

pytestmark = pytest.mark.root


def spec(ref: str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=ref)


async def test_pull_list_status_remove(stub: Any, test_images: TestImages) -> None:
    ref = test_images.with_user.ref
    pulled = await stub.PullImage(api_pb2.PullImageRequest(image=spec(ref)))
    assert pulled.image_ref == test_images.with_user.id
    listed = await stub.ListImages(api_pb2.ListImagesRequest())
    assert [i.id for i in listed.images] == [pulled.image_ref]
    image = listed.images[0]
    assert list(image.repo_tags) == [ref] and image.size > 0
    assert image.uid.value == 1000 and image.username == ""
    filtered = await stub.ListImages(api_pb2.ListImagesRequest(
        filter=api_pb2.ImageFilter(image=spec("nothing:here"))))
    assert list(filtered.images) == []
    for name in (ref, pulled.image_ref, pulled.image_ref[7:19], image.repo_digests[0]):
        status = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec(name), verbose=True))
        assert status.image.id == pulled.image_ref, name
    info = json.loads(status.info["info"])
    assert info["imageSpec"]["config"]["User"] == "1000"
    assert info["chainID"] == test_images.with_user.spec["rootfs"]["diff_ids"][0]
    streamed = [m async for m in stub.StreamImages(api_pb2.StreamImagesRequest())]
    assert [i.id for m in streamed for i in m.images] == [pulled.image_ref]
    fs = (await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())).image_filesystems[0]
    assert fs.used_bytes.value > image.size and fs.inodes_used.value > 0
    assert fs.fs_id.mountpoint.endswith("images") and fs.timestamp > 0
    await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(ref)))
    await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(ref)))
    status = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec(ref)))
    assert not status.HasField("image")
    fs = (await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())).image_filesystems[0]
    assert fs.used_bytes.value == 0


async def test_errors_map_to_status_codes(stub: Any, manager: ImageManager,
                                          test_images: TestImages) -> None:
    missing = f"{test_images.registry.host}/no-such-image:1.0"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PullImage(api_pb2.PullImageRequest(image=spec(missing)))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and missing in str(err.value.details())
    for bad in ("", "UPPER/Case:bad tag"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PullImage(api_pb2.PullImageRequest(image=spec(bad)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PullImage(api_pb2.PullImageRequest(image=spec("127.0.0.1:1/x:1")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    pulled = await stub.PullImage(api_pb2.PullImageRequest(image=spec(test_images.busybox.ref)))
    manager.set_in_use_checker(lambda image_id: image_id == pulled.image_ref)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(pulled.image_ref)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "in use" in str(err.value.details())


async def test_pull_with_auth_config(stub: Any, auth_registry: Any) -> None:
    ref = f"{auth_registry.host}/private/busybox:1"
    request = api_pb2.PullImageRequest(image=spec(ref), auth=api_pb2.AuthConfig(
        username="alice", password="s3cret", server_address=auth_registry.host))
    assert (await stub.PullImage(request)).image_ref.startswith("sha256:")
