"""What critest's framework (cri-tools pkg/framework) sends, the test images it pulls, and one real
`crishim serve` in a test node per module to send it to.

critest pulls `gcr.io/k8s-staging-cri-tools/test-image-*`; here each is a one-layer busybox image under
the same repository name on the session registry, distinct by a label so that different names are
different images where critest's are.

The requests themselves are built by tests/critest/framework.py, with critest's defaults. critest's
client runs on the node, so the streaming clients here run inside the node's network namespace too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from crishim.api.runtime.v1 import api_pb2, api_pb2_grpc
from tests.critest import framework
from tests.harness import REPO, CrishimServer, TestNode, make_test_node, remove_root, run
from tests.image_fixtures import TestImages, registry_in_node
from tests.sandbox.podutil import stop_and_remove


@dataclass
class CritestImages:
    """critest's image constants (consts.go), as pushed to the session registry."""

    with_tag: str
    without_tag: str  # pushed as :latest
    with_digest: str
    all_references: str
    users: list[tuple[str, str, int, str]]  # (description, ref, uid, username)
    different_tags_different_images: list[str]
    different_tags_same_image: list[str]
    same_image_different_registries: list[str]  # one registry under two names, to the runtime two


@pytest.fixture(scope="session")
def critest_images(test_images: TestImages) -> CritestImages:
    registry, base = test_images.registry, test_images.base_layer
    host = registry.host

    def push(repo: str, tags: list[str], **config: object) -> str:
        labels = {"critest": f"{repo}:{','.join(tags)}"}
        image = registry.push_image(repo, tags, [base], {"Labels": labels, **config})
        return image.ref or f"{host}/{repo}@{image.manifest_digest}"

    users = [("UID only", "test-image-user-uid", "1002", 1002, ""),
             ("Username only", "test-image-user-username", "www-data", 0, "www-data"),
             ("UID:group", "test-image-user-uid-group", "1003:users", 1003, ""),
             ("Username:group", "test-image-user-username-group", "www-data:users", 0, "www-data")]
    push("test-image-tags", ["1", "2", "3"])
    with_tag = push("test-image-tag", ["test"])
    return CritestImages(
        with_tag=with_tag,
        without_tag=push("test-image-latest", ["latest"]).removesuffix(":latest"),
        with_digest=push("test-image-digest", []),
        all_references=push("test-image-tag", ["all"]),
        users=[(desc, push(repo, ["latest"], User=user), uid, name) for desc, repo, user, uid, name in users],
        different_tags_different_images=[push(f"test-image-{i}", ["latest"]) for i in (1, 2, 3)],
        different_tags_same_image=[f"{host}/test-image-tags:{i}" for i in (1, 2, 3)],
        same_image_different_registries=[with_tag, with_tag.replace("127.0.0.1:", "localhost:", 1)],
    )


@dataclass
class CritestNode:
    node: TestNode
    server: CrishimServer

    @property
    def rc(self) -> api_pb2_grpc.RuntimeServiceStub:
        return self.server.runtime()

    @property
    def ic(self) -> api_pb2_grpc.ImageServiceStub:
        return self.server.images()

    def pod_config(self, prefix: str = "create-PodSandbox-for-container-",
                   **fields: object) -> api_pb2.PodSandboxConfig:
        """framework.CreatePodSandboxForContainer's config (and its siblings', with `fields` added)."""
        return framework.pod_config(self.server, prefix, **fields)

    def run_pod(self, config: api_pb2.PodSandboxConfig) -> str:
        return str(self.rc.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config),
                                         timeout=60).pod_sandbox_id)

    def create_container(self, pod_id: str, pod: api_pb2.PodSandboxConfig,
                         config: api_pb2.ContainerConfig) -> str:
        """framework.CreateContainer: pull the image first if the runtime does not have it."""
        image = config.image.image
        status = self.ic.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image)))
        if not status.HasField("image"):
            self.ic.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image),
                                                       sandbox_config=pod), timeout=60)
        return str(self.rc.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=60).container_id)

    def start(self, container_id: str) -> None:
        self.rc.StartContainer(api_pb2.StartContainerRequest(container_id=container_id), timeout=60)

    def stop_and_remove_pod(self, pod_id: str) -> None:
        stop_and_remove(self.server, pod_id)

    def python(self, script: str, *args: str, timeout: float = 60) -> str:
        """Run a Python script inside the node (where the streaming server and pod IPs are reachable)."""
        result = run([*self.node.prefix(), sys.executable, "-c", script, *args], check=False, cwd=REPO,
                     timeout=timeout)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def critest_node(tmp_path_factory: pytest.TempPathFactory,
                 test_images: TestImages) -> Iterator[CritestNode]:
    """A node with the test registry on its loopback and one server, shared by a module's specs; each
    spec removes its pods as critest's AfterEach does."""
    work = tmp_path_factory.mktemp("critest-node")
    with make_test_node() as node, registry_in_node(node, test_images.registry, work):
        server = CrishimServer(root=work / "crishim", node=node)
        server.root.mkdir(parents=True)
        server.conf_dir.mkdir()
        server.write_network()
        try:
            yield CritestNode(node, server.start())
        finally:
            server.remove_all_pods()
            server.stop()
            remove_root(server.root)


def loads(output: str) -> dict[str, object]:
    return dict(json.loads(output))
