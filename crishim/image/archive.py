"""Reading image archives for `crishim images import`: OCI image layouts and `docker save` tarballs.

Blocking code, run in a worker thread. A tarball (a file, or a stream of one from the admin socket or
stdin; gzip-compressed or not) is first unpacked (regular files and directories only, names checked like
layer entries) into a scratch directory of the store, so both kinds are read as directories. Every blob
is hashed before it enters the store, as pulled blobs are.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from crishim.errors import CrishimError, InvalidArgument
from crishim.image import reference
from crishim.image.unpack import clean_name

NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
READ_REPORT_STEP = 32 << 20  # a "read" progress event per this many archive bytes
_CHUNK = 1 << 20


class ImportCancelled(CrishimError):
    """The import's client went away (or crishim is stopping): what it stored so far is dropped."""


def _ignore(_event: dict[str, Any]) -> None:
    pass


@dataclass
class ImportMonitor:
    """How an import reports progress (`report`, called from any thread) and learns it must stop.

    Stopping is cooperative: the import checks `cancelled` between chunks and layers, so no worker
    thread is left writing into the store after the import has failed and cleaned up.
    """

    report: Callable[[dict[str, Any]], None] = _ignore
    cancelled: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise ImportCancelled("its client went away or crishim is stopping")


@dataclass
class ArchiveImage:
    """One image found in an archive: its names, its manifest (OCI only) and where its blobs are."""

    names: list[str]
    top_digest: str  # what the archive's index names ("" for docker save)
    manifest: dict[str, Any] | None
    manifest_paths: list[Path]  # the index and manifest blobs, top first
    config_path: Path
    layer_paths: list[Path]


def extract_archive(source: IO[bytes], what: str, dest: Path, monitor: ImportMonitor) -> None:
    """Unpack the tar read from `source` (read once, front to back: it may be a pipe) into `dest`."""
    dest.mkdir()
    done = 0
    reported = 0
    links: list[tuple[str, str]] = []
    try:
        with tarfile.open(fileobj=source, mode="r|*") as tar:
            for member in tar:
                monitor.check()
                rel = clean_name(member.name)
                if not rel:
                    continue
                target = dest / rel
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isreg():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    data = tar.extractfile(member)
                    assert data is not None
                    with open(target, "xb") as out:
                        while chunk := data.read(_CHUNK):
                            monitor.check()
                            out.write(chunk)
                            done += len(chunk)
                            if done - reported >= READ_REPORT_STEP:
                                reported = done
                                monitor.report({"event": "read", "bytes": done})
                elif member.issym() or member.islnk():
                    base = posixpath.dirname(rel) if member.issym() else ""
                    links.append((rel, posixpath.normpath(posixpath.join(base, member.linkname))))
        _link(dest, links, what)
        while source.read(_CHUNK):  # what follows the tar's end (padding): a stream is read to its end
            monitor.check()
    except (tarfile.TarError, EOFError, FileExistsError) as exc:
        raise InvalidArgument(f"{what}: not a usable image archive: {exc}") from exc
    monitor.report({"event": "read", "bytes": done, "done": True})


def _link(dest: Path, links: list[tuple[str, str]], what: str) -> None:
    """Links between the archive's files, as hard links: `docker save` before Docker 25 stores a layer
    once and links each other layer.tar of the same content to it (`../<id>/layer.tar`)."""
    for name, target in links:
        if target == ".." or target.startswith(("../", "/")):
            raise InvalidArgument(f"{what}: {name} links to {target!r}, outside the archive")
        source = dest / target
        if source.is_file() and not source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            os.link(source, dest / name)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read {path.name} of the archive: {exc}") from exc


def _blob(root: Path, digest: str) -> Path:
    if not reference.is_digest(digest):
        raise InvalidArgument(f"archive names a bad digest {digest!r}")
    return _member(root, f"blobs/sha256/{digest[7:]}")


def _member(root: Path, name: str) -> Path:
    """The archive's file `name` (as its own JSON names it), which must be there."""
    path = root / clean_name(name)
    if not path.is_file():
        raise InvalidArgument(f"the archive has no file {name!r}, which it names")
    return path


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


def read_docker_save(root: Path, _choose: Any = None) -> list[ArchiveImage]:
    found = []
    for entry in _load(root / "manifest.json"):
        names = [str(reference.parse(tag)) for tag in entry.get("RepoTags") or []]
        found.append(ArchiveImage(names=names, top_digest="", manifest=None, manifest_paths=[],
                                  config_path=_member(root, entry["Config"]),
                                  layer_paths=[_member(root, p) for p in entry["Layers"]]))
    return found


def read_archive(source: Path | IO[bytes], scratch: Path, choose: Any,
                 monitor: ImportMonitor) -> list[ArchiveImage]:
    """The images in `source`: a layout directory, a tarball or a stream of one (unpacked into
    `scratch`)."""
    if isinstance(source, Path):
        if not source.exists():
            raise InvalidArgument(f"{source}: no such file or directory")
        what = str(source)
        if source.is_dir():
            root = source
        else:
            with open(source, "rb") as stream:
                extract_archive(stream, what, scratch, monitor)
            root = scratch
    else:
        what = "the archive stream"
        extract_archive(source, what, scratch, monitor)
        root = scratch
    for name, reader in (("index.json", read_layout), ("manifest.json", read_docker_save)):
        if (root / name).is_file():
            try:
                return reader(root, choose)
            except (KeyError, TypeError, AttributeError) as exc:  # a field missing or of a wrong type
                raise InvalidArgument(f"{what}: malformed {name} or manifest: {exc!r}") from exc
    raise InvalidArgument(f"{what}: neither an OCI image layout (index.json) nor a docker save "
                          "archive (manifest.json)")
