"""Pod manifest parsing: the API server's defaults, and errors that name the field."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crishim.kubelet.manifest import ManifestError, load_pod, parse_pod, parse_quantity
from tests.harness import REPO


def manifest(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app", "image": "busybox:1"}], **spec}}


def test_defaults_are_the_api_servers() -> None:
    pod = parse_pod(manifest())
    assert (pod.namespace, pod.restart_policy, pod.dns_policy, pod.termination_grace_period_seconds) == (
        "default", "Always", "ClusterFirst", 30)
    assert len(pod.uid) == 36 and pod.uid != parse_pod(manifest()).uid  # a fresh uid per run
    (app,) = pod.containers
    assert app.image_pull_policy == "IfNotPresent"
    assert app.termination_message_path == "/dev/termination-log"


@pytest.mark.parametrize(("image", "policy"), [
    ("busybox", "Always"), ("busybox:latest", "Always"), ("busybox:1.36", "IfNotPresent"),
    ("127.0.0.1:5000/busybox", "Always"), ("127.0.0.1:5000/busybox:1", "IfNotPresent"),
    ("busybox@sha256:" + "a" * 64, "IfNotPresent")])
def test_image_pull_policy_default(image: str, policy: str) -> None:
    data = manifest()
    data["spec"]["containers"][0]["image"] = image
    assert parse_pod(data).containers[0].image_pull_policy == policy


def test_probe_defaults_and_named_port() -> None:
    data = manifest()
    data["spec"]["containers"][0].update(
        ports=[{"name": "http", "containerPort": 8080}],
        readinessProbe={"tcpSocket": {"port": "http"}},
        livenessProbe={"exec": {"command": ["true"]}, "periodSeconds": 1, "terminationGracePeriodSeconds": 4})
    app = parse_pod(data).containers[0]
    assert app.readiness_probe is not None and app.readiness_probe.tcp_socket is not None
    assert app.readiness_probe.tcp_socket.port == "http"
    assert (app.readiness_probe.period_seconds, app.readiness_probe.timeout_seconds,
            app.readiness_probe.success_threshold, app.readiness_probe.failure_threshold) == (10, 1, 1, 3)
    assert app.liveness_probe is not None and app.liveness_probe.termination_grace_period_seconds == 4


def test_host_network_defaults_host_port() -> None:
    data = manifest(hostNetwork=True)
    data["spec"]["containers"][0]["ports"] = [{"containerPort": 8080}]
    assert parse_pod(data).containers[0].ports[0].host_port == 8080


def test_scheduler_fields_are_ignored_and_status_accepted() -> None:
    data = manifest(nodeSelector={"a": "b"}, tolerations=[], serviceAccountName="x")
    data["status"] = {}
    data["metadata"]["creationTimestamp"] = None
    assert parse_pod(data).name == "web"


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    target: Any = data
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return data


BAD = [
    ("spec.containers.0.name", "Web", "spec.containers[0].name: 'Web' is not a valid DNS-1123 label"),
    ("metadata.name", "x" * 254, "metadata.name: "),
    ("metadata.name", "", "metadata.name: required"),
    ("kind", "Deployment", "kind: expected apiVersion v1 and kind Pod"),
    ("spec.restartPolicy", "Sometimes", "spec.restartPolicy: 'Sometimes' is not one of Always, OnFailure"),
    ("spec.containers.0.foo", 1, "spec.containers[0].foo: unknown or unsupported field"),
    ("spec.containers.0.image", None, "spec.containers[0].image: required"),
    ("spec.containers.0.command", "sleep 1", "spec.containers[0].command: expected a list of strings"),
    ("spec.containers.0.args", ["a\x00b"], "spec.containers[0].args[0]: must not contain NUL"),
    ("spec.containers.0.livenessProbe", {"exec": {"command": ["x"]}, "periodSeconds": "1"},
     "spec.containers[0].livenessProbe.periodSeconds: expected an integer, got '1'"),
    ("spec.containers.0.livenessProbe", {"exec": {"command": ["x"]}, "periodSeconds": 0},
     "spec.containers[0].livenessProbe.periodSeconds: must be >= 1"),
    ("spec.containers.0.livenessProbe", {"httpGet": {"port": 80}},
     "spec.containers[0].livenessProbe.httpGet: not supported"),
    ("spec.containers.0.livenessProbe", {"exec": {"command": ["x"]}, "tcpSocket": {"port": 1}},
     "spec.containers[0].livenessProbe: exactly one of exec or tcpSocket"),
    ("spec.containers.0.livenessProbe", {"exec": {"command": ["x"]}, "successThreshold": 2},
     "spec.containers[0].livenessProbe.successThreshold: must be 1 for liveness probes"),
    ("spec.containers.0.readinessProbe", {"tcpSocket": {"port": 70000}},
     "spec.containers[0].readinessProbe.tcpSocket.port: must be between 1 and 65535"),
    ("spec.containers.0.resources", {"limits": {"cpu": "abc"}},
     "spec.containers[0].resources.limits.cpu: 'abc' is not a quantity"),
    ("spec.containers.0.resources", {"limits": {"memory": "1Gi"}, "requests": {"memory": "2Gi"}},
     "spec.containers[0].resources.requests.memory: must be less than or equal to the memory limit"),
    ("spec.containers.0.resources", {"limits": {"gpu": 1}},
     "spec.containers[0].resources.limits.gpu: unsupported resource"),
    ("spec.containers.0.volumeMounts", [{"name": "nope", "mountPath": "/x"}],
     "spec.containers[0].volumeMounts[0].name: no volume named 'nope'"),
    ("spec.containers.0.env", [{"name": "1=2", "value": "x"}],
     "spec.containers[0].env[0].name: '1=2' is not a valid environment variable name"),
    ("spec.containers.0.env", [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.x"}}}],
     "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: 'spec.x' is not one of"),
    ("spec.containers.0.ports", [{"containerPort": 0}],
     "spec.containers[0].ports[0].containerPort: must be between 1 and 65535"),
    ("spec.containers.0.securityContext", {"runAsUser": True},
     "spec.containers[0].securityContext.runAsUser: expected an integer, got True"),
    ("spec.containers.0.lifecycle", {"preStop": {"tcpSocket": {"port": 1}}},
     "spec.containers[0].lifecycle.preStop.tcpSocket: not supported for lifecycle hooks"),
    ("spec.initContainers", [{"name": "app", "image": "x"}],
     "spec.containers[0].name: duplicate container name 'app'"),
    ("spec.initContainers", [{"name": "init", "image": "x", "readinessProbe": {"exec": {"command": ["x"]}}}],
     "spec.initContainers[0].readinessProbe: not allowed on init containers"),
    ("spec.dnsPolicy", "None", "spec.dnsConfig.nameservers: required when dnsPolicy is None"),
    ("spec.volumes", [{"name": "v", "configMap": {"name": "c"}}],
     "spec.volumes[0].configMap: unsupported volume type"),
    ("spec.volumes", [{"name": "v", "hostPath": {"path": "relative"}}],
     "spec.volumes[0].hostPath.path: must be an absolute path"),
    ("spec.terminationGracePeriodSeconds", -1, "spec.terminationGracePeriodSeconds: must be >= 0"),
    ("spec.hostNetwork", "yes", "spec.hostNetwork: expected true or false, got 'yes'"),
    ("spec", [], "spec: expected a mapping, got list"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[f"{b[0]}:{i}" for i, b in enumerate(BAD)])
def test_errors_name_the_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_pod(_set(manifest(), path, value))
    assert str(caught.value).startswith(message), str(caught.value)


def test_duplicate_host_port_and_host_network_mismatch() -> None:
    data = manifest()
    data["spec"]["containers"].append({"name": "b", "image": "x",
                                       "ports": [{"containerPort": 81, "hostPort": 80}]})
    data["spec"]["containers"][0]["ports"] = [{"containerPort": 80, "hostPort": 80}]
    with pytest.raises(ManifestError, match=r"^spec.containers\[1\].ports\[0\].hostPort: 80/TCP is already"):
        parse_pod(data)
    data = manifest(hostNetwork=True)
    data["spec"]["containers"][0]["ports"] = [{"containerPort": 80, "hostPort": 81}]
    with pytest.raises(ManifestError, match="hostPort: must equal containerPort on a hostNetwork pod"):
        parse_pod(data)


def test_load_pod_wants_one_yaml_document() -> None:
    text = json.dumps(manifest())
    assert load_pod(text).name == "web"
    with pytest.raises(ManifestError, match="expected exactly one document, got 2"):
        load_pod(f"{text}\n---\n{text}\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_pod("a: [b")
    with pytest.raises(ManifestError, match="manifest: expected a mapping, got str"):
        load_pod("just text")


@pytest.mark.parametrize(("text", "value"), [
    ("500m", Decimal("0.5")), ("1", Decimal(1)), ("0.25", Decimal("0.25")), ("64Mi", Decimal(64 << 20)),
    ("1G", Decimal(10**9)), ("1e3", Decimal(1000)), ("1.5Gi", Decimal(3 << 29)), (2, Decimal(2)),
    ("100n", Decimal("1e-7")), (".5", Decimal("0.5"))])
def test_quantities(text: Any, value: Decimal) -> None:
    assert parse_quantity(text, "x") == value


@pytest.mark.parametrize("text", ["", "abc", "1Xi", "-1", "1.2.3", "Mi", True, None, "1e999999999"])
def test_bad_quantities(text: Any) -> None:
    with pytest.raises(ManifestError, match=r"^x: "):
        parse_quantity(text, "x")


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "m", "k", "M", "Ki", "Mi", "Gi"]))
def test_quantity_suffixes_scale(number: int, suffix: str) -> None:
    scale = {"": Decimal(1), "m": Decimal("0.001"), "k": Decimal(1000), "M": Decimal(10**6),
             "Ki": Decimal(1024), "Mi": Decimal(1 << 20), "Gi": Decimal(1 << 30)}
    assert parse_quantity(f"{number}{suffix}", "x") == number * scale[suffix]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=3), max_leaves=8)
FIELDS = ["metadata", "metadata.name", "metadata.labels", "spec.containers", "spec.containers.0",
          "spec.containers.0.name", "spec.containers.0.image", "spec.containers.0.command",
          "spec.containers.0.env", "spec.containers.0.ports", "spec.containers.0.resources",
          "spec.containers.0.livenessProbe", "spec.containers.0.securityContext", "spec.volumes",
          "spec.dnsConfig", "spec.hostname", "spec.securityContext", "spec.initContainers"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FIELDS), JSON)
def test_odd_values_give_manifest_errors_only(path: str, value: Any) -> None:
    """Whatever sits in a field, parsing either succeeds or says which field is wrong."""
    try:
        parse_pod(_set(manifest(), path, value))
    except ManifestError as exc:
        assert str(exc).split(":", 1)[0].split(".", 1)[0].split("[")[0] in ("metadata", "spec", "kind",
                                                                            "manifest"), str(exc)


def test_cli_refuses_a_bad_manifest_naming_the_field(tmp_path: Path) -> None:
    bad = copy.deepcopy(manifest())
    bad["spec"]["containers"][0]["livenessProbe"] = {"httpGet": {"port": 80}}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(bad))
    result = subprocess.run([sys.executable, "-m", "crishim", "pod", "run", str(path), "--pod-run-dir",
                             str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert result.stderr == (f"crishim pod: {path}: spec.containers[0].livenessProbe.httpGet: not supported "
                             "(crishim pod runs exec and tcpSocket handlers)\n")
    assert not (tmp_path / "run").exists()  # refused before anything was set up
