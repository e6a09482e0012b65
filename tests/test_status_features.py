"""Status's runtime handlers and features, as kubelet and critest read them from a real server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.container.features import HandlerFeatures, features_from, mount_setattr_available
from tests.container.hostserver import host_server


def claims_rro(binary: str) -> bool:
    """Asked of the runtime directly: `features` lists `rro` (crun 1.8.1 has no such command)."""
    result = subprocess.run([binary, "features"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return False
    return "rro" in json.loads(result.stdout).get("mountOptions", [])


@pytest.mark.root
@pytest.mark.parametrize("default", ["runc", "crun"])
def test_status_lists_each_handler_and_the_default_unnamed(tmp_path: Path, default: str) -> None:
    with host_server(tmp_path / "crishim", **{"runtime.default_handler": default}) as server:
        response = server.runtime().Status(api_pb2.StatusRequest())
    handlers = [(h.name, h.features.recursive_read_only_mounts, h.features.user_namespaces)
                for h in response.runtime_handlers]
    want = {"runc": claims_rro("/usr/bin/runc"), "crun": claims_rro("/usr/bin/crun")}
    assert want["runc"], "runc 1.1.5 on this kernel applies rro (machine-notes.md)"
    assert sorted(handlers) == sorted([("runc", want["runc"], False), ("crun", want["crun"], False),
                                       ("", want[default], False)])
    assert response.features.supplemental_groups_policy
    assert not response.features.user_namespaces_host_network


def test_features_output_is_read_strictly() -> None:
    runc_like = json.dumps({"ociVersionMin": "1.0.0", "mountOptions": ["ro", "rro", "rbind"]})
    assert features_from(runc_like, kernel_rro=True) == HandlerFeatures(recursive_read_only=True)
    # The kernel must have mount_setattr for the runtime to apply rro.
    assert features_from(runc_like, kernel_rro=False) == HandlerFeatures()
    for output in ("", "not json", "[]", json.dumps({"mountOptions": "rro"}),
                   json.dumps({"mountOptions": ["ro", "rbind"]}), json.dumps({"hooks": ["prestart"]})):
        assert features_from(output, kernel_rro=True) == HandlerFeatures(), output


def test_this_kernel_has_mount_setattr() -> None:
    assert mount_setattr_available()  # 5.12+; the machine runs 6.x
