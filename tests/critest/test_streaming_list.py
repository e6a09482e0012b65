"""critest's "Streaming List" specs (cri-tools pkg/validate/streaming_list.go): its streaming client
lists through the Stream* RPCs (KEP 5825), which critest only skips for containerd. Each spec is sent
to a real `crishim serve` and its pages are joined as the client joins them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.critest import framework
from tests.critest.node import CritestNode, critest_node
from tests.image_fixtures import TestImages

__all__ = ["critest_node"]  # the module-scoped fixture, imported for pytest

pytestmark = pytest.mark.root


def joined(pages: Iterable[Any], field: str) -> list[Any]:
    """The items of every page; every page holds at least one (the RPC's contract)."""
    items: list[Any] = []
    for page in pages:
        assert len(getattr(page, field)) > 0, "a streamed page must hold at least one item"
        items.extend(getattr(page, field))
    return items


@pytest.fixture
def lists(critest_node: CritestNode) -> Iterator[StreamingLists]:
    made = StreamingLists(critest_node)
    yield made
    for pod_id in made.pods:
        critest_node.stop_and_remove_pod(pod_id)


class StreamingLists:
    """critest's streaming client: the list calls of the runtime and image services, streamed."""

    def __init__(self, critest: CritestNode) -> None:
        self.critest = critest
        self.pods: list[str] = []
        self.configs: dict[str, api_pb2.PodSandboxConfig] = {}

    def pods_listed(self, **filter_: Any) -> list[str]:
        rpc = self.critest.rc.StreamPodSandboxes
        return [p.id for p in joined(rpc(api_pb2.StreamPodSandboxesRequest(
            filter=api_pb2.PodSandboxFilter(**filter_)), timeout=30), "pod_sandboxes")]

    def containers_listed(self, **filter_: Any) -> list[str]:
        rpc = self.critest.rc.StreamContainers
        return [c.id for c in joined(rpc(api_pb2.StreamContainersRequest(
            filter=api_pb2.ContainerFilter(**filter_)), timeout=30), "containers")]

    def container_stats(self, **filter_: Any) -> list[str]:
        rpc = self.critest.rc.StreamContainerStats
        return [s.attributes.id for s in joined(rpc(api_pb2.StreamContainerStatsRequest(
            filter=api_pb2.ContainerStatsFilter(**filter_)), timeout=30), "container_stats")]

    def pod_stats(self, request: api_pb2.StreamPodSandboxStatsRequest) -> list[str]:
        rpc = self.critest.rc.StreamPodSandboxStats
        return [s.attributes.id for s in joined(rpc(request, timeout=30), "pod_sandbox_stats")]

    def run_pod(self, prefix: str, labels: dict[str, str] | None = None) -> str:
        """framework.RunDefaultPodSandbox (or RunPodSandbox with labels)."""
        config = self.critest.pod_config(prefix, labels=labels or {})
        self.pods.append(self.critest.run_pod(config))
        self.configs[self.pods[-1]] = config
        return self.pods[-1]

    def default_container(self, image: str, prefix: str, labels: dict[str, str] | None = None,
                          start: bool = False) -> str:
        """framework.CreateDefaultContainer(WithLabels) in a pod of its own (the Context's BeforeEach)."""
        if not self.pods:
            self.run_pod("create-PodSandbox-for-container-")
        pod_id = self.pods[0]
        config = framework.container_config(prefix, image, labels=labels or {})
        container_id = self.critest.create_container(pod_id, self.configs[pod_id], config)
        if start:
            self.critest.start(container_id)
        return container_id


def test_streaming_list_specs_are_not_skipped(critest_node: CritestNode) -> None:
    """The Describe's BeforeEach skips every spec for a runtime whose name contains "containerd"."""
    version = critest_node.rc.Version(api_pb2.VersionRequest())
    assert version.runtime_name and "containerd" not in version.runtime_name.lower()


# --- pods -------------------------------------------------------------------------------------------

def test_should_list_a_created_pod_via_streaming(lists: StreamingLists) -> None:
    """should list a created pod via streaming"""
    pod_id = lists.run_pod("stream-list-pod-")
    assert lists.pods_listed(id=pod_id) == [pod_id], "PodSandbox should be listed via streaming"


def test_should_list_pods_filtered_by_state_via_streaming(lists: StreamingLists) -> None:
    """should list pods filtered by state via streaming"""
    pod_id = lists.run_pod("stream-list-pod-state-")
    ready = api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)
    assert pod_id in lists.pods_listed(state=ready), "Running pod should appear with READY filter"
    not_ready = api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY)
    assert pod_id not in lists.pods_listed(state=not_ready)


def test_should_list_pods_filtered_by_labels_via_streaming(lists: StreamingLists) -> None:
    """should list pods filtered by labels via streaming"""
    pod_id = lists.run_pod("stream-list-pod-labels-", {"stream-test": "yes"})
    assert pod_id in lists.pods_listed(label_selector={"stream-test": "yes"})
    assert pod_id not in lists.pods_listed(label_selector={"stream-test": "no"})


def test_should_return_empty_list_for_non_existent_pod_via_streaming(lists: StreamingLists) -> None:
    """should return empty list for non-existent pod via streaming"""
    assert lists.pods_listed(id="non-existent-id") == []


# --- containers ---------------------------------------------------------------------------------------

def test_should_list_a_created_container_via_streaming(lists: StreamingLists, busybox_image: str) -> None:
    """should list a created container via streaming"""
    container_id = lists.default_container(busybox_image, "stream-list-ctr-")
    assert lists.containers_listed(id=container_id) == [container_id]


def test_should_list_containers_filtered_by_pod_via_streaming(lists: StreamingLists,
                                                              busybox_image: str) -> None:
    """should list containers filtered by pod via streaming"""
    container_id = lists.default_container(busybox_image, "stream-list-ctr-pod-")
    assert lists.containers_listed(pod_sandbox_id=lists.pods[0]) == [container_id]


def test_should_list_containers_filtered_by_state_via_streaming(lists: StreamingLists,
                                                                busybox_image: str) -> None:
    """should list containers filtered by state via streaming"""
    container_id = lists.default_container(busybox_image, "stream-list-ctr-state-", start=True)
    running = api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)
    assert container_id in lists.containers_listed(state=running)
    created = api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_CREATED)
    assert container_id not in lists.containers_listed(state=created)


def test_should_list_multiple_containers_via_streaming(lists: StreamingLists, busybox_image: str) -> None:
    """should list multiple containers via streaming"""
    ids = [lists.default_container(busybox_image, f"stream-list-multi-{i}-") for i in (1, 2, 3)]
    assert sorted(lists.containers_listed(pod_sandbox_id=lists.pods[0])) == sorted(ids)


def test_should_not_list_removed_container_via_streaming(lists: StreamingLists, busybox_image: str) -> None:
    """should not list removed container via streaming"""
    container_id = lists.default_container(busybox_image, "stream-list-ctr-remove-")
    lists.critest.rc.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
    assert lists.containers_listed(id=container_id) == []


def test_should_list_container_stats_via_streaming(lists: StreamingLists, busybox_image: str) -> None:
    """should list container stats via streaming"""
    container_id = lists.default_container(busybox_image, "stream-list-stats-", start=True)
    assert lists.container_stats(id=container_id) == [container_id]


def test_should_list_container_stats_filtered_by_labels_via_streaming(lists: StreamingLists,
                                                                      busybox_image: str) -> None:
    """should list container stats filtered by labels via streaming"""
    container_id = lists.default_container(busybox_image, "stream-list-stats-labels-",
                                           {"stream-stats": "yes"}, start=True)
    assert container_id in lists.container_stats(label_selector={"stream-stats": "yes"})
    assert container_id not in lists.container_stats(label_selector={"stream-stats": "no"})


# --- pod stats and metrics ----------------------------------------------------------------------------

def test_should_list_pod_sandbox_stats_by_id_via_streaming(lists: StreamingLists) -> None:
    """should list pod sandbox stats by ID via streaming"""
    pod_id = lists.run_pod("stream-list-pod-stats-")
    request = api_pb2.StreamPodSandboxStatsRequest(filter=api_pb2.PodSandboxStatsFilter(id=pod_id))
    assert lists.pod_stats(request) == [pod_id], "Should return stats for the created pod"


def test_should_list_pod_sandbox_stats_with_nil_filter_via_streaming(lists: StreamingLists) -> None:
    """should list pod sandbox stats with nil filter via streaming"""
    pod_id = lists.run_pod("stream-list-pod-stats-nil-")
    assert pod_id in lists.pod_stats(api_pb2.StreamPodSandboxStatsRequest())


def test_should_list_pod_sandbox_stats_filtered_by_labels_via_streaming(lists: StreamingLists) -> None:
    """should list pod sandbox stats filtered by labels via streaming"""
    pod_id = lists.run_pod("stream-list-pod-stats-labels-", {"stream-pod-stats": "yes"})
    def labelled(value: str) -> api_pb2.StreamPodSandboxStatsRequest:
        return api_pb2.StreamPodSandboxStatsRequest(filter=api_pb2.PodSandboxStatsFilter(
            label_selector={"stream-pod-stats": value}))

    assert pod_id in lists.pod_stats(labelled("yes"))
    assert pod_id not in lists.pod_stats(labelled("no"))


def test_should_list_pod_sandbox_metrics_via_streaming(lists: StreamingLists) -> None:
    """should list pod sandbox metrics via streaming"""
    pod_id = lists.run_pod("stream-list-pod-metrics-")
    pages = lists.critest.rc.StreamPodSandboxMetrics(api_pb2.StreamPodSandboxMetricsRequest(), timeout=30)
    metrics = joined(pages, "pod_sandbox_metrics")
    assert pod_id in [m.pod_sandbox_id for m in metrics], "Pod metrics should include the created pod"


# --- images -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("by_spec", [False, True], ids=["all", "filtered-by-spec"])
def test_should_list_images_via_streaming(critest_node: CritestNode, test_images: TestImages,
                                          by_spec: bool) -> None:
    """should list images via streaming / should list images filtered by spec via streaming"""
    name = test_images.busybox.ref
    critest_node.ic.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=name)), timeout=60)
    request = api_pb2.StreamImagesRequest()
    if by_spec:
        request.filter.image.image = name
    images = joined(critest_node.ic.StreamImages(request, timeout=30), "images")
    assert images, "Image list should not be empty via streaming"
    assert any(name in image.repo_tags for image in images), "Pulled image should appear"
    if by_spec:
        assert [image.id for image in images] == [test_images.busybox.id]
