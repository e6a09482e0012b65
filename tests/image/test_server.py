"""The ImageService of a real `crishim serve` process, as crictl and kubelet reach it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import CrishimServer, remove_root
from tests.image_fixtures import LayerBlob, TestImages, entry, make_tar

pytestmark = pytest.mark.root


def test_pull_status_remove_via_mirror(tmp_path: Path, busybox_image: str) -> None:
    """Runs on the machine's network (no test node): the registry listens on its loopback."""
    registries = tmp_path / "registries.d"
    registries.mkdir()
    registry_url = "http://" + busybox_image.split("/", 1)[0]
    (registries / "registry.k8s.io.toml").write_text(f'mirrors = ["{registry_url}"]\n')
    server = CrishimServer(root=tmp_path / "crishim", node=None,
                           extra_config={"images.registry_config_dir": str(registries)})
    try:
        server.start()
        images = server.images()
        ref = "registry.k8s.io/busybox:1"
        pulled = images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)),
                                  timeout=30)
        status = images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)))
        assert status.image.id == pulled.image_ref and list(status.image.repo_tags) == [ref]
        fs = images.ImageFsInfo(api_pb2.ImageFsInfoRequest()).image_filesystems[0]
        assert fs.used_bytes.value > status.image.size
        images.RemoveImage(api_pb2.RemoveImageRequest(
            image=api_pb2.ImageSpec(image=pulled.image_ref)))
        assert list(images.ListImages(api_pb2.ListImagesRequest()).images) == []
    finally:
        server.stop()
        remove_root(server.root)


def test_hostile_layer_fails_the_pull_with_a_clear_status(tmp_path: Path,
                                                          test_images: TestImages) -> None:
    """The status names the layer and the entry, is not INTERNAL, and the earlier image survives."""
    evil_layer = LayerBlob.from_tar(make_tar([entry("sub/.wh...")]))
    evil = test_images.registry.push_image("evil-nested-whiteout", ["1"],
                                           [test_images.base_layer, evil_layer])
    server = CrishimServer(root=tmp_path / "crishim", node=None)
    try:
        server.start()
        images = server.images()
        busybox = api_pb2.ImageSpec(image=test_images.busybox.ref)
        images.PullImage(api_pb2.PullImageRequest(image=busybox), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=evil.ref)),
                             timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert evil_layer.digest in caught.value.details()
        assert "'sub/.wh...'" in caught.value.details()
        status = images.ImageStatus(api_pb2.ImageStatusRequest(image=busybox))
        assert status.image.id == test_images.busybox.id
        layer = server.state_dir / "images/layers" / test_images.base_layer.diff_id[7:]
        assert (layer / "bin/busybox").is_file()
    finally:
        server.stop()
        remove_root(server.root)
