"""Images the image suite builds for itself: deep layer stacks and zstd-compressed layers."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import httpx

from tests.harness import run
from tests.image_fixtures import OCI_MANIFEST, Image, LayerBlob, Registry, TestImages, entry, make_tar


def push_deep_image(images: TestImages, count: int) -> Image:
    """`count` layers: busybox at the bottom, then tiny layers that each add `/deep/<i>` and rewrite
    `/deep/which`, the last one also `/top`. Reading `/etc/hostname`, `/top` and `/deep/which` in the
    container shows the bottom layer, the top one and that they are stacked in order."""
    layers = [images.base_layer]
    for i in range(1, count):
        members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = [
            entry("deep/", tarfile.DIRTYPE, 0o755), (entry(f"deep/{i}"), str(i).encode()),
            (entry("deep/which"), str(i).encode())]
        if i == count - 1:
            members.append((entry("top"), b"top layer\n"))
        layers.append(LayerBlob.from_tar(make_tar(members)))
    return images.registry.push_image(f"deep{count}", ["1"], layers)


def push_zstd_busybox(images: TestImages, work: Path) -> str:
    """busybox:1 re-pushed with its layer compressed as zstd (an OCI `tar+zstd` layer): recompressed
    into a layout first, as a direct copy would reuse the gzip blob the registry already has."""
    ref = f"{images.registry.host}/busybox-zstd:1"
    layout = work / "zstd-layout"
    run(["skopeo", "copy", "--quiet", "--dest-compress-format", "zstd", f"oci:{images.layout}:1",
         f"oci:{layout}:1"])
    run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{ref}"])
    return ref


def layer_media_types(registry: Registry, repo: str, tag: str) -> list[str]:
    response = httpx.get(f"{registry.url}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST},
                         timeout=10)
    return [layer["mediaType"] for layer in json.loads(response.content)["layers"]]
