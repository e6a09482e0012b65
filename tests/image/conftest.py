"""Image suite fixtures; the registry and the test images live in tests/image_fixtures.py.

`stub` is an ImageService client of an in-process gRPC server over `manager`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.config import Config
from crishim.image import ImageManager
from crishim.runtime import Runtime
from crishim.server.service import ImageServicer, generic_handler


@pytest.fixture
def registries_dir(tmp_path: Path) -> Path:
    path = tmp_path / "registries.d"
    path.mkdir()
    return path


@pytest.fixture
async def manager(tmp_path: Path, registries_dir: Path) -> AsyncIterator[ImageManager]:
    images = ImageManager(root=tmp_path / "images", registry_config_dir=str(registries_dir))
    await images.start()
    yield images
    await images.close()


@pytest.fixture
async def stub(tmp_path: Path, manager: ImageManager) -> AsyncIterator[Any]:
    runtime = SimpleNamespace(images=manager, config=Config(state_dir=str(tmp_path)))
    service = api_pb2.DESCRIPTOR.services_by_name["ImageService"]
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([generic_handler(ImageServicer(cast(Runtime, runtime)), service)])
    socket = tmp_path / "images.sock"
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix:{socket}")
    try:
        yield api_pb2_grpc.ImageServiceStub(channel)
    finally:
        await channel.close(None)
        await server.stop(None)
