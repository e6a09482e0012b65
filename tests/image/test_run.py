"""Images that needed more than the common path, run as containers by a real server in a test node."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import CrishimServer
from tests.image.built import layer_media_types, push_deep_image, push_zstd_busybox
from tests.image_fixtures import TestImages
from tests.sandbox.podutil import pod_config, run_pod
from tests.test_e2e import container_config, exec_sync, start_container

pytestmark = pytest.mark.root


def run_and_read(server: CrishimServer, ref: str, *paths: str) -> str:
    """Pull `ref`, start a container of it that sleeps, and cat `paths` inside it."""
    server.images().PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=120)
    pod = pod_config("reader")
    pod_id = run_pod(server, pod)
    cid = start_container(server, pod_id, pod, container_config("reader", ref, "sleep", "1000"))
    result = exec_sync(server, cid, "cat", *paths)
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode()


def test_zstd_layers_pull_and_run(server_factory: Callable[..., CrishimServer], node_registry: str,
                                  test_images: TestImages, tmp_path: Path) -> None:
    ref = push_zstd_busybox(test_images, tmp_path)
    assert layer_media_types(test_images.registry, "busybox-zstd", "1") == \
        ["application/vnd.oci.image.layer.v1.tar+zstd"]
    assert run_and_read(server_factory(), ref, "/etc/group") == "root:x:0:\nuser:x:1000:\n"


def test_500_layer_image_runs(server_factory: Callable[..., CrishimServer], node_registry: str,
                              test_images: TestImages) -> None:
    """overlayfs's own limit: 500 lower layers; bottom (busybox) and top are both visible."""
    image = push_deep_image(test_images, 500)
    out = run_and_read(server_factory(), image.ref, "/etc/group", "/top", "/deep/which")
    assert out == "root:x:0:\nuser:x:1000:\ntop layer\n499"
