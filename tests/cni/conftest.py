"""Fixtures for the cni tests: test-node network namespaces, pod netns, fake plugin dirs."""

from __future__ import annotations

import json
import os
import secrets
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cnitest_node import Node, netns_list, no_dad, sh

from cni import NetworkConfigList, parse_network_config_list


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    name = f"crishim-t-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", name)
    n = Node(name, tmp_path)
    try:
        no_dad(name)
        n.run("ip", "link", "set", "lo", "up")
        yield n
    finally:
        for pod in n.pods:
            sh("ip", "netns", "del", pod, check=False)
        sh("ip", "netns", "del", name, check=False)
    assert not {ns for ns in netns_list() if ns.startswith(name)}, "leaked netns"


@pytest.fixture
def make_net(node: Node) -> Callable[..., NetworkConfigList]:
    """Build a conflist from plugin objects; host-local keeps its leases under the test's tmp."""

    def build(name: str, version: str, *plugins: dict[str, Any], **top: Any) -> NetworkConfigList:
        fixed = []
        for p in plugins:
            p = json.loads(json.dumps(p))
            ipam = p.get("ipam")
            if ipam and ipam.get("type") == "host-local":
                ipam["dataDir"] = str(node.tmp / "ipam")
            fixed.append(p)
        doc = {"cniVersion": version, "name": name, "plugins": fixed, **top}
        return parse_network_config_list(json.dumps(doc).encode(), f"<test {name}>")

    return build


@pytest.fixture
def fake_bin(tmp_path: Path) -> Callable[[str, str], str]:
    """Write a fake plugin script into a tmp bin dir and return the dir."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()

    def write(name: str, body: str) -> str:
        path = bindir / name
        path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
        path.chmod(0o755)
        return str(bindir)

    return write
