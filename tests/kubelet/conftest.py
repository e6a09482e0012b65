"""One test node, one crishim server and a node-local registry for the whole `crishim pod` suite.

Each scenario runs its own pod (its own uid) and proves it leaves nothing behind, so sharing the server
keeps the suite fast without letting one scenario see another's leftovers unnoticed.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import CrishimServer, TestNode, make_test_node, poll, remove_root
from tests.image_fixtures import Registry, TestImages
from tests.kubelet.podrun import Kubelet

HTTP_GET = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"


@contextlib.contextmanager
def registry_in_node(node: TestNode, source: Registry, work: Path) -> Iterator[str]:
    """A second docker-registry on the node's own 127.0.0.1 serving the session registry's storage, so
    image references are the same inside and outside the node."""
    config = work / "node-registry.yml"
    config.write_text(json.dumps({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(source.root / "data")}},
        "http": {"addr": source.host}}))
    proc = subprocess.Popen([*node.prefix(), "docker-registry", "serve", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: node.sh(sys.executable, "-c", HTTP_GET, f"http://{source.host}/v2/",
                             check=False).returncode == 0, timeout=20, what="the node's registry")
        yield source.host
    finally:
        proc.terminate()
        proc.wait(10)


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
