"""One test node, one crishim server and a node-local registry for the whole `crishim pod` suite.

Each scenario runs its own pod (its own uid) and proves it leaves nothing behind, so sharing the server
keeps the suite fast without letting one scenario see another's leftovers unnoticed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import CrishimServer, TestNode, make_test_node, remove_root
from tests.image_fixtures import TestImages, registry_in_node
from tests.kubelet.podrun import Kubelet


@pytest.fixture(scope="module")
def kube_node() -> Iterator[TestNode]:
    with make_test_node() as node:
        yield node


@pytest.fixture(scope="module")
def kube_server(kube_node: TestNode, test_images: TestImages,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrishimServer]:
    """A crishim server in the node with busybox:1 already pulled (runners find it with ImageStatus)."""
    work = tmp_path_factory.mktemp("kubelet")
    server = CrishimServer(root=work / "crishim", node=kube_node)
    server.root.mkdir(parents=True)
    server.conf_dir.mkdir()
    server.write_network()
    with registry_in_node(kube_node, test_images.registry, work):
        try:
            server.start()
            server.images().PullImage(api_pb2.PullImageRequest(
                image=api_pb2.ImageSpec(image=test_images.busybox.ref)), timeout=60)
            yield server
        finally:
            server.remove_all_pods()
            server.stop()
            remove_root(server.root)


@pytest.fixture
def kubelet(kube_node: TestNode, kube_server: CrishimServer, tmp_path: Path) -> Iterator[Kubelet]:
    """`crishim pod` against the shared server, with its log root, root dir and cgroup root per test."""
    kubelet = Kubelet(node=kube_node, server=kube_server, work=tmp_path,
                      cgroup_root=f"/crishim-kubelet-test-{secrets.token_hex(3)}")
    try:
        yield kubelet
    finally:
        kubelet.close()
