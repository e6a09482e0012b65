"""critest's image specs (cri-tools pkg/validate/image.go, image_consistency.go,
image_id_consistency.go) against a real `crishim serve`, with critest's test images (node.py).

Pulls carry critest's `testImagePodSandbox`: a sandbox config that is present but empty apart from
(empty) labels.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2, api_pb2_grpc
from tests.critest import framework
from tests.critest.node import CritestImages, CritestNode, critest_images, critest_node
from tests.harness import CrishimServer, poll, remove_root
from tests.image.proxy import registry_proxy_thread
from tests.image_fixtures import TestImages

__all__ = ["critest_images", "critest_node"]  # fixtures, imported for pytest

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def images_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrishimServer]:
    """One server for the module, on the machine's network (the registry is on its loopback); each
    test leaves no image behind, as critest's specs remove what they pulled."""
    server = CrishimServer(root=tmp_path_factory.mktemp("critest-images") / "crishim", node=None)
    try:
        yield server.start()
    finally:
        server.stop()
        remove_root(server.root)


@pytest.fixture
def ic(images_server: CrishimServer) -> Iterator[api_pb2_grpc.ImageServiceStub]:
    stub = images_server.images()
    yield stub
    left = stub.ListImages(api_pb2.ListImagesRequest()).images
    for image in left:
        stub.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image.id)))
    assert not left, f"the test left images behind: {[list(i.repo_tags) for i in left]}"


def pull(ic: api_pb2_grpc.ImageServiceStub, name: str) -> str:
    """framework.PullPublicImage: a tagless name gets `:latest`; the sandbox config is critest's
    testImagePodSandbox, present and empty."""
    if ":" not in name.rsplit("/", 1)[-1] and "@" not in name:
        name += ":latest"
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=name))
    request.sandbox_config.SetInParent()
    return str(ic.PullImage(request, timeout=60).image_ref)


def image_status(ic: api_pb2_grpc.ImageServiceStub, name: str) -> api_pb2.Image | None:
    """framework.ImageStatus: nil when the runtime knows no such image."""
    response = ic.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name)))
    return response.image if response.HasField("image") else None


def remove_image(ic: api_pb2_grpc.ImageServiceStub, name: str) -> None:
    """critest's removeImage: look the name up, then remove by the id."""
    status = image_status(ic, name)
    if status is not None:
        ic.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=status.id)))


def pull_public_image_and_remove(ic: api_pb2_grpc.ImageServiceStub, name: str) -> api_pb2.Image:
    """critest's testPullPublicImage (its status check is the caller's); returns the status seen."""
    remove_image(ic, name)
    image_ref = pull(ic, name)
    status = image_status(ic, name)  # as given: a tagless name means :latest
    assert status is not None, "Should have one image in list"
    assert status.id == image_ref and status.size > 0
    remove_image(ic, status.id)
    assert image_status(ic, name) is None, "Should have none image in list"
    return status


def test_public_image_with_tag_should_be_pulled_and_removed(
        ic: api_pb2_grpc.ImageServiceStub, critest_images: CritestImages) -> None:
    """public image with tag should be pulled and removed [Conformance]"""
    status = pull_public_image_and_remove(ic, critest_images.with_tag)
    assert list(status.repo_tags) == [critest_images.with_tag]


def test_public_image_should_timeout_if_requested(ic: api_pb2_grpc.ImageServiceStub,
                                                  critest_images: CritestImages) -> None:
    """public image should timeout if requested [Conformance]

    The 1 ms deadline expires on the client, so the code is gRPC's own; what is crishim's is that the
    abandoned call harms nothing: the same pull then succeeds."""
    with pytest.raises(grpc.RpcError) as caught:
        ic.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=critest_images.with_tag)),
                     timeout=0.001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    pull(ic, critest_images.with_tag)
    remove_image(ic, critest_images.with_tag)


def test_public_image_should_timeout_if_requested_mid_download(
        images_server: CrishimServer, ic: api_pb2_grpc.ImageServiceStub, test_images: TestImages) -> None:
    """public image should timeout if requested [Conformance], with a deadline that passes while the
    layer downloads (a registry stalled half way): the server gives the pull up with its client, keeps
    nothing of it, and the retry fetches afresh instead of waiting on the stalled download."""
    with registry_proxy_thread(test_images.registry.url) as proxy:
        proxy.stall_min_bytes = 100_000  # the busybox layer stalls half way until the proxy stops
        name = f"{proxy.host}/withuser:1"
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=name))
        with pytest.raises(grpc.RpcError) as caught:
            ic.PullImage(request, timeout=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        store = images_server.state_dir / "images"

        def scratch() -> list[str]:
            """Half downloaded blobs, half unpacked layers."""
            return [p.name for p in [*(store / "ingest").iterdir(), *(store / "layers").glob(".tmp-*")]]

        poll(lambda: not scratch(), what="the abandoned download to be dropped")
        assert image_status(ic, name) is None
        proxy.stall_min_bytes = 0
        assert ic.PullImage(request, timeout=10).image_ref == test_images.with_user.id
        remove_image(ic, name)


def test_public_image_without_tag_should_be_pulled_and_removed(
        ic: api_pb2_grpc.ImageServiceStub, critest_images: CritestImages) -> None:
    """public image without tag should be pulled and removed [Conformance]"""
    status = pull_public_image_and_remove(ic, critest_images.without_tag)
    assert list(status.repo_tags) == [critest_images.without_tag + ":latest"]


def test_public_image_with_digest_should_be_pulled_and_removed(
        ic: api_pb2_grpc.ImageServiceStub, critest_images: CritestImages) -> None:
    """public image with digest should be pulled and removed [Conformance]"""
    status = pull_public_image_and_remove(ic, critest_images.with_digest)
    assert list(status.repo_tags) == []
    assert list(status.repo_digests) == [critest_images.with_digest]


def test_image_status_should_support_all_kinds_of_references(
        ic: api_pb2_grpc.ImageServiceStub, critest_images: CritestImages) -> None:
    """image status should support all kinds of references [Conformance]"""
    name = critest_images.all_references
    remove_image(ic, name)
    pull(ic, name)
    status = image_status(ic, name)
    assert status is not None, "should get image status"
    assert image_status(ic, status.id) == status
    assert list(status.repo_tags) == [name] and len(status.repo_digests) == 1
    for ref in [*status.repo_tags, *status.repo_digests]:
        assert image_status(ic, ref) == status, f"image status with {ref!r}"
    remove_image(ic, name)
    assert image_status(ic, name) is None


def test_image_status_get_image_fields_should_not_have_uid_username_empty(
        ic: api_pb2_grpc.ImageServiceStub, critest_images: CritestImages) -> None:
    """image status get image fields should not have Uid|Username empty [Conformance]"""
    for description, ref, uid, username in critest_images.users:
        pull(ic, ref)
        status = image_status(ic, ref)
        assert status is not None
        assert status.uid.value == uid, f"{description}, Image Uid should be {uid}"
        assert status.HasField("uid") == (uid != 0), description
        assert status.username == username, f"{description}, Image Username should be {username}"
    for _, ref, _, _ in critest_images.users:
        remove_image(ic, ref)


def test_list_image_should_get_exactly_3_image_in_the_result_list(
        ic: api_pb2_grpc.ImageServiceStub, critest_images: CritestImages) -> None:
    """listImage should get exactly 3 image in the result list [Conformance]"""
    names = critest_images.different_tags_different_images
    ids = [pull(ic, name) for name in names]
    assert len(set(ids)) == 3, "3 image ids should be returned"
    by_id = {image.id: image for image in ic.ListImages(api_pb2.ListImagesRequest(
        filter=api_pb2.ImageFilter())).images}
    for image_id, name in zip(ids, names, strict=True):
        assert list(by_id[image_id].repo_tags) == [name], "Repo tag should be correct"
    for name in names:
        remove_image(ic, name)


def test_list_image_should_get_exactly_3_repo_tags_in_the_result_image(
        ic: api_pb2_grpc.ImageServiceStub, critest_images: CritestImages) -> None:
    """listImage should get exactly 3 repoTags in the result image [Conformance]"""
    names = critest_images.different_tags_same_image
    ids = {pull(ic, name) for name in names}
    assert len(ids) == 1, "Only 1 image id should be returned"
    (image,) = [i for i in ic.ListImages(api_pb2.ListImagesRequest()).images if i.id in ids]
    assert sorted(image.repo_tags) == sorted(names), "Should have 3 repoTags in single image"
    for name in names:
        remove_image(ic, name)


def image_with_tag(ic: api_pb2_grpc.ImageServiceStub, name: str) -> api_pb2.Image:
    images: list[api_pb2.Image] = list(ic.ListImages(api_pb2.ListImagesRequest()).images)
    (image,) = [i for i in images if name in i.repo_tags]
    return image


def removing_one_name_removes_all(ic: api_pb2_grpc.ImageServiceStub, names: list[str]) -> None:
    """The two "removing image ..." specs: pull every name, find one image with all of them, remove
    it by the first (critest's removeImage: by the id it resolves to), then no name nor the id
    resolves."""
    for name in names:
        remove_image(ic, name)
    for name in names:
        pull(ic, name)
    image = image_with_tag(ic, names[0])
    assert sorted(image.repo_tags) == sorted(names), "Should contain all the tags"
    remove_image(ic, names[0])
    for name in [*names, image.id]:
        assert image_status(ic, name) is None, f"Image should be gone when checking by {name!r}"


def test_removing_image_by_one_tag_should_remove_all_tags(
        ic: api_pb2_grpc.ImageServiceStub, critest_images: CritestImages) -> None:
    """removing image by one tag should remove all tags [Conformance]

    Also by the tag itself (RemoveImage of a name, not an id): every tag goes with it."""
    names = critest_images.different_tags_same_image
    removing_one_name_removes_all(ic, names)
    for name in names:
        pull(ic, name)
    ic.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=names[1])))
    assert all(image_status(ic, name) is None for name in names)


def test_removing_image_from_one_registry_should_remove_all_tags_from_other_registries(
        ic: api_pb2_grpc.ImageServiceStub, critest_images: CritestImages) -> None:
    """removing image from one registry should remove all tags from other registries [Conformance]"""
    removing_one_name_removes_all(ic, critest_images.same_image_different_registries)


def tagged_in_list(ic: api_pb2_grpc.ImageServiceStub, name: str) -> bool:
    return any(name in image.repo_tags for image in ic.ListImages(api_pb2.ListImagesRequest()).images)


def test_should_not_list_or_get_image_status_immediately_after_removal(
        ic: api_pb2_grpc.ImageServiceStub, critest_images: CritestImages) -> None:
    """should not list or get image status immediately after removal [Conformance]"""
    name = critest_images.with_tag
    remove_image(ic, name)
    pull(ic, name)
    remove_image(ic, name)
    assert not tagged_in_list(ic, name), f"Image {name!r} should not be listed after removal"
    assert image_status(ic, name) is None, f"Image status for {name!r} should be nil after removal"


def test_should_list_and_get_image_status_immediately_after_pulling(
        ic: api_pb2_grpc.ImageServiceStub, critest_images: CritestImages) -> None:
    """should list and get image status immediately after pulling [Conformance]"""
    name = critest_images.with_tag
    remove_image(ic, name)
    pull(ic, name)
    assert tagged_in_list(ic, name), f"Image {name!r} should be listed after pulling"
    assert image_status(ic, name) is not None, f"Image status for {name!r} should be available"
    remove_image(ic, name)


def test_should_not_fail_on_simultaneous_remove_image_calls(
        images_server: CrishimServer, ic: api_pb2_grpc.ImageServiceStub,
        critest_images: CritestImages) -> None:
    """should not fail on simultaneous RemoveImage calls [Conformance]

    Five goroutines each RemoveImage by id then ImageStatus by id: every removal succeeds and every
    status that follows one is nil. Each thread has its own channel, as goroutines sharing one Go
    client still get concurrent streams."""
    name = critest_images.with_tag
    remove_image(ic, name)
    pull(ic, name)
    status = image_status(ic, name)
    assert status is not None
    image_id = status.id
    barrier = threading.Barrier(5)
    results: list[tuple[BaseException | None, bool]] = []

    def remove() -> None:
        with grpc.insecure_channel(f"unix:{images_server.socket}") as channel:
            stub = api_pb2_grpc.ImageServiceStub(channel)
            spec = api_pb2.ImageSpec(image=image_id)
            barrier.wait(10)
            error: BaseException | None = None
            try:
                stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec), timeout=30)
            except grpc.RpcError as caught:
                error = caught
            found = stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec), timeout=30).HasField("image")
            results.append((error, found))

    threads = [threading.Thread(target=remove) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 5
    for error, found in results:
        assert error is None, "Concurrent RemoveImage calls should not return an error"
        assert not found, "Image should be missing immediately after RemoveImage call returns"
    assert image_status(ic, image_id) is None


def run_container_of(critest: CritestNode, image_ref: str, name: str) -> tuple[str, str]:
    """A pod and a started container of the pulled image, named as critest names it (the image by its
    id, the name the user gave alongside); returns (pod id, container id)."""
    pod = critest.pod_config()
    pod_id = critest.run_pod(pod)
    config = framework.container_config("id-consistency-", image_ref, ())
    config.image.user_specified_image = name
    container_id = critest.create_container(pod_id, pod, config)
    critest.start(container_id)
    return pod_id, container_id


def remove_container_and_pod(critest: CritestNode, pod_id: str, container_id: str) -> None:
    """critest's deferred cleanup, in its order: the (maybe still running) container, then the pod."""
    critest.rc.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id), timeout=60)
    critest.stop_and_remove_pod(pod_id)


def test_should_return_the_same_image_identifier_across_all_apis(
        critest_node: CritestNode, critest_images: CritestImages) -> None:
    """should return the same image identifier across all APIs [Conformance]

    PullImageResponse.image_ref == Image.id == ContainerStatus.image_id == Container.image_id."""
    ic, name = critest_node.ic, critest_images.with_tag
    image_ref = pull(ic, name)
    assert image_ref, "PullImageResponse.image_ref should not be empty"
    status = image_status(ic, name)
    assert status is not None and status.id == image_ref, "Image.id MUST match PullImageResponse.image_ref"
    pod_id, container_id = run_container_of(critest_node, image_ref, name)
    container_status = critest_node.rc.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=container_id)).status
    (listed,) = critest_node.rc.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(id=container_id))).containers
    assert container_status.image_id == image_ref, "ContainerStatus.image_id MUST match"
    assert listed.image_id == image_ref, "Container.image_id MUST match"
    # The legacy image_ref, which kubelet shows as the pod's imageID: a repo digest, as containerd gives.
    assert container_status.image_ref in status.repo_digests, (container_status.image_ref, status)
    assert listed.image_ref == image_ref  # ListContainers' is the id, as containerd's
    remove_container_and_pod(critest_node, pod_id, container_id)
    remove_image(ic, name)


def test_should_return_the_same_image_identifier_when_pulled_from_different_registries(
        critest_node: CritestNode, critest_images: CritestImages) -> None:
    """should return the same image identifier when pulled from different registries [Conformance]"""
    ic = critest_node.ic
    name1, name2 = critest_images.same_image_different_registries
    ref1, ref2 = pull(ic, name1), pull(ic, name2)
    assert ref1 and ref1 == ref2, "Image IDs MUST be the same even if pulled from different registries"
    status1, status2 = image_status(ic, name1), image_status(ic, name2)
    assert status1 is not None and status1.id == ref1
    assert status2 is not None and status2.id == ref1
    assert sorted(status1.repo_tags) == sorted([name1, name2])
    pod_id, container_id = run_container_of(critest_node, ref2, name2)
    container_status = critest_node.rc.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=container_id)).status
    assert container_status.image_id == ref1, "ContainerStatus.image_id MUST match the first pull's id"
    # The repo digest in the repository the container names, though the image has one in each.
    assert len(status2.repo_digests) == 2
    assert container_status.image_ref == next(d for d in status2.repo_digests
                                               if d.startswith(name2.rsplit(":", 1)[0] + "@"))
    remove_container_and_pod(critest_node, pod_id, container_id)
    remove_image(ic, name1)
    remove_image(ic, name2)
    assert image_status(ic, name2) is None
