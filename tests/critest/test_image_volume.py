"""critest's "Image Volume [Feature:ImageVolume]" specs (cri-tools pkg/validate/image_volume.go) as
critest sends them: an ordinary pod, the container and the volume both named by the pulled image's id
with the user's name alongside, `sh -c top` as the command.

critest skips rather than fails when a runtime lacks image volumes; crishim has them, so every skip
condition is asserted false here (tests/container/test_image_volumes.py covers the mounts in depth).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.critest import framework
from tests.critest.node import CritestImages, CritestNode, critest_images, critest_node

__all__ = ["critest_images", "critest_node"]  # fixtures, imported for pytest

pytestmark = pytest.mark.root

IMAGE_VOLUME_TEST_PATH = "/mnt/image-volume"


class Spec:
    """One spec's pod, image and container; its cleanup is critest's deferred one."""

    def __init__(self, critest: CritestNode, name: str) -> None:
        self.critest, self.name = critest, name
        self.image_ref = str(critest.ic.PullImage(api_pb2.PullImageRequest(
            image=api_pb2.ImageSpec(image=name)), timeout=60).image_ref)
        self.pod = critest.pod_config()
        self.pod_id = critest.run_pod(self.pod)
        self.container_ids: list[str] = []

    def image_spec(self) -> api_pb2.ImageSpec:
        return api_pb2.ImageSpec(image=self.image_ref, user_specified_image=self.name)

    def create(self, prefix: str, readonly: bool = True, sub_path: str = "") -> str:
        mount = api_pb2.Mount(container_path=IMAGE_VOLUME_TEST_PATH, readonly=readonly,
                              image=self.image_spec(), image_sub_path=sub_path)
        config = framework.container_config(prefix, self.image_ref, framework.PAUSE_COMMAND, mounts=[mount])
        config.image.CopyFrom(self.image_spec())
        container_id = self.critest.create_container(self.pod_id, self.pod, config)
        self.container_ids.append(container_id)
        return container_id

    def exec_sync(self, container_id: str, *cmd: str) -> api_pb2.ExecSyncResponse:
        return framework.exec_sync(self.critest.server, container_id, *cmd)

    def close(self) -> None:
        for container_id in self.container_ids:
            self.critest.rc.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
        self.critest.stop_and_remove_pod(self.pod_id)


@pytest.fixture
def spec(critest_node: CritestNode, critest_images: CritestImages) -> Iterator[Spec]:
    made = Spec(critest_node, critest_images.with_tag)
    yield made
    made.close()


def test_should_return_image_digest_in_container_status_mounts(spec: Spec) -> None:
    """should return image digest in ContainerStatus mounts"""
    container_id = spec.create("image-volume-digest-test-")
    mounts = spec.critest.rc.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=container_id)).status.mounts
    (mount,) = [m for m in mounts if m.container_path == IMAGE_VOLUME_TEST_PATH]
    assert mount.image.image_ref == spec.image_ref, "ImageSpec.image_ref in Mount should match"


def test_should_correctly_mount_image_and_enforce_read_only(spec: Spec) -> None:
    """should correctly mount image and enforce read-only"""
    container_id = spec.create("image-volume-mount-test-")
    spec.critest.start(container_id)
    assert spec.exec_sync(container_id, "ls", "-A", f"{IMAGE_VOLUME_TEST_PATH}/bin/sh").exit_code == 0
    write = spec.exec_sync(container_id, "touch", f"{IMAGE_VOLUME_TEST_PATH}/test-write")
    assert write.exit_code != 0, "writing to image volume should fail"
    listed = spec.exec_sync(container_id, f"{IMAGE_VOLUME_TEST_PATH}/bin/ls", IMAGE_VOLUME_TEST_PATH)
    assert listed.exit_code == 0, listed.stderr  # not noexec


def test_should_reject_image_volume_with_readonly_set_to_false(spec: Spec) -> None:
    """should reject Image Volume with Readonly set to false"""
    with pytest.raises(grpc.RpcError) as caught:
        spec.create("image-volume-readonly-test-", readonly=False)
    # Not critest's "unsupported" answers (Unimplemented, Unknown "failed to mkdir"): a rejection.
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "readonly" in str(caught.value.details())


def test_should_succeed_when_using_a_valid_sub_path(spec: Spec) -> None:
    """subPath should succeed when using a valid subPath"""
    container_id = spec.create("image-volume-subpath-test-", sub_path="etc")
    spec.critest.start(container_id)
    assert spec.exec_sync(container_id, "ls", IMAGE_VOLUME_TEST_PATH).exit_code == 0
    assert spec.exec_sync(container_id, "ls", f"{IMAGE_VOLUME_TEST_PATH}/etc/passwd").exit_code != 0
    assert spec.exec_sync(container_id, "ls", f"{IMAGE_VOLUME_TEST_PATH}/passwd").exit_code == 0


def test_should_fail_when_sub_path_does_not_exist_in_the_image(spec: Spec) -> None:
    """subPath should fail when subPath does not exist in the image"""
    with pytest.raises(grpc.RpcError) as caught:
        spec.create("image-volume-subpath-fail-test-", sub_path="not-existing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'not-existing'" in str(caught.value.details())
