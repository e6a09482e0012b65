"""`crishim pod` against a real crishim server in a test node: what kubelet would observe."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from crishim.api.runtime.v1 import api_pb2
from tests.harness import REPO, poll
from tests.image_fixtures import TestImages
from tests.kubelet.podrun import Kubelet

pytestmark = pytest.mark.root

EXAMPLE = REPO / "examples" / "two-containers.yaml"


def with_image(manifest: dict[str, Any], image: str) -> dict[str, Any]:
    manifest = copy.deepcopy(manifest)
    for key in ("initContainers", "containers"):
        for container in manifest["spec"].get(key, []):
            container["image"] = image
    return manifest


def pod(name: str, image: str, *containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return with_image({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"containers": list(containers), **spec}}, image)


def test_example_pod_runs_and_deletes_cleanly(kubelet: Kubelet, test_images: TestImages) -> None:
    manifest = with_image(yaml.safe_load(EXAMPLE.read_text()), test_images.busybox.ref)
    runner = kubelet.run(kubelet.write(manifest))
    uid = kubelet.uid(runner)
    runner.wait_for(r"pod Running, 2/2 ready", timeout=30)

    # The init container ran first, to completion, and its output reached the app containers.
    log_dir = kubelet.log_root / f"default_two-containers_{uid}"
    assert sorted(p.relative_to(log_dir).as_posix() for p in log_dir.rglob("*.log")) == [
        "client/0.log", "setup/0.log", "web/0.log"]
    poll(lambda: "hello from two-containers" in kubelet.logs("two-containers", "-c", "client"),
         what="the client to fetch the page over localhost")
    assert "hello from two-containers" in (log_dir / "client" / "0.log").read_text()
    assert kubelet.logs("two-containers", "-c", "setup") == ""

    # The CRI objects carry kubelet's labels and annotations.
    (sandbox,) = kubelet.sandboxes(uid)
    assert sandbox.metadata.attempt == 0 and sandbox.state == api_pb2.SANDBOX_READY
    assert sandbox.labels == {"app": "demo", "io.kubernetes.pod.name": "two-containers",
                              "io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": uid}
    assert sandbox.annotations["kubernetes.io/config.source"] == "file"
    web = kubelet.running(uid, "web")
    assert web is not None
    status = kubelet.container_status(web.id)
    assert status.log_path == str(log_dir / "web" / "0.log")
    assert status.labels["io.kubernetes.container.name"] == "web"
    assert status.annotations["io.kubernetes.container.restartCount"] == "0"
    assert status.annotations["io.kubernetes.pod.terminationGracePeriod"] == "5"
    assert json.loads(status.annotations["io.kubernetes.container.ports"]) == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"}]

    report = kubelet.status("two-containers")
    assert report["phase"] == "Running" and report["ready"] == "2/2" and report["runner_pid"]
    setup = report["containers"]["setup"]
    assert (setup["state"], setup["exit_code"]) == ("exited", 0)

    deleted = kubelet.command("delete", "two-containers", "--timeout", "30")
    assert "deleted" in deleted.stdout
    assert runner.wait_exit() == 0
    runner.wait_for("client: .*FailedPreStopHook|deleted")
    assert "FailedPreStopHook" not in runner.output()
    kubelet.assert_gone(uid, "two-containers")
