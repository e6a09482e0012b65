"""Reading image archives for `crishim images import`: OCI image layouts and `docker save` tarballs.

Blocking code, run in a worker thread. A tarball is first unpacked (regular files and directories only,
names checked like layer entries) into a scratch directory of the store, so both kinds are read as
directories. Every blob is hashed before it enters the store, as pulled blobs are.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crishim.errors import InvalidArgument
from crishim.image import reference
from crishim.image.unpack import clean_name

NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"


@dataclass
class ArchiveImage:
    """One image found in an archive: its names, its manifest (OCI only) and where its blobs are."""

    names: list[str]
    top_digest: str  # what the archive's index names ("" for docker save)
    manifest: dict[str, Any] | None
    manifest_paths: list[Path]  # the index and manifest blobs, top first
    config_path: Path
    layer_paths: list[Path]


def extract_archive(archive: Path, dest: Path) -> None:
    dest.mkdir()
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                rel = clean_name(member.name)
                if not rel:
                    continue
                target = dest / rel
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isreg():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    with open(target, "xb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
    except (tarfile.TarError, FileExistsError) as exc:
        raise InvalidArgument(f"{archive}: not a usable image archive: {exc}") from exc


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read {path.name} of the archive: {exc}") from exc


def _blob(root: Path, digest: str) -> Path:
    if not reference.is_digest(digest):
        raise InvalidArgument(f"archive names a bad digest {digest!r}")
    return root / "blobs" / "sha256" / digest[7:]


def _oci_names(annotations: dict[str, str]) -> list[str]:
    """A full name if the layout gives one; a bare tag (`1`) names nothing we could pull again."""
    name = annotations.get(NAME_ANNOTATION) or annotations.get(REF_ANNOTATION, "")
    if name and ("/" in name or ":" in name or "@" in name):
        return [str(reference.parse(name))]
    return []


def read_layout(root: Path, choose: Any) -> list[ArchiveImage]:
    """Images of an OCI layout; `choose(index, what)` picks this host's entry of an image index."""
    found = []
    for desc in _load(root / "index.json").get("manifests", []):
        top = desc["digest"]
        paths = [_blob(root, top)]
        manifest = _load(paths[0])
        while "manifests" in manifest:
            chosen = choose(manifest, f"image index {top} in {root}")
            paths.append(_blob(root, chosen["digest"]))
            manifest = _load(paths[-1])
        layers = [_blob(root, layer["digest"]) for layer in manifest.get("layers", [])]
        found.append(ArchiveImage(names=_oci_names(desc.get("annotations") or {}), top_digest=top,
                                  manifest=manifest, manifest_paths=paths,
                                  config_path=_blob(root, manifest["config"]["digest"]),
                                  layer_paths=layers))
    return found


def read_docker_save(root: Path) -> list[ArchiveImage]:
    found = []
    for entry in _load(root / "manifest.json"):
        names = [str(reference.parse(tag)) for tag in entry.get("RepoTags") or []]
        found.append(ArchiveImage(names=names, top_digest="", manifest=None, manifest_paths=[],
                                  config_path=root / clean_name(entry["Config"]),
                                  layer_paths=[root / clean_name(p) for p in entry["Layers"]]))
    return found


def read_archive(path: Path, scratch: Path, choose: Any) -> list[ArchiveImage]:
    """The images in `path` (a directory or a tarball, unpacked into `scratch`)."""
    if not path.exists():
        raise InvalidArgument(f"{path}: no such file or directory")
    root = path
    if not path.is_dir():
        extract_archive(path, scratch)
        root = scratch
    if (root / "index.json").is_file():
        return read_layout(root, choose)
    if (root / "manifest.json").is_file():
        return read_docker_save(root)
    raise InvalidArgument(f"{path}: neither an OCI image layout (index.json) nor a docker save "
                          "archive (manifest.json)")
