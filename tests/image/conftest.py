"""Image suite fixtures; the registry and the test images live in tests/image_fixtures.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crishim.image import ImageManager


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
