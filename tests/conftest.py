"""Fixtures shared by every suite; the machinery lives in tests/harness.py."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import CrishimServer, TestNode, in_ci, make_test_node, remove_root

pytest_plugins = ["tests.image_fixtures", "tests.container.fixtures"]

NEEDED_TOOLS = ("ip", "nsenter", "iptables-save")


def _root_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, mounts)"
    missing = [tool for tool in NEEDED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (run `make install`)"
    if not Path("/usr/lib/cni/bridge").exists():
        return "needs the Debian containernetworking-plugins package (run `make install`)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside CI, skip what this machine cannot run; in CI run everything, so a gap fails loudly."""
    problem = _root_problem()
    if problem is None or in_ci():
        return
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(pytest.mark.skip(reason=problem))


@pytest.fixture
def node() -> Iterator[TestNode]:
    with make_test_node() as n:
        yield n


@pytest.fixture
def server_factory(tmp_path: Path, node: TestNode) -> Iterator[Callable[..., CrishimServer]]:
    """Make crishim servers inside the test node; every one is stopped and its files removed afterwards."""
    made: list[CrishimServer] = []

    def make(name: str = "crishim", start: bool = True, network: bool = True,
             kind: type[CrishimServer] = CrishimServer, **extra: Any) -> CrishimServer:
        server = kind(root=tmp_path / name, node=node, extra_config=extra)
        server.root.mkdir(parents=True, exist_ok=True)
        server.conf_dir.mkdir(exist_ok=True)
        if network:
            server.write_network()
        made.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in made:
        server.remove_all_pods()
        server.stop()
        remove_root(server.root)


@pytest.fixture
def server(server_factory: Callable[..., CrishimServer]) -> CrishimServer:
    return server_factory()
