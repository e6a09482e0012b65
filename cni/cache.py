"""libcni-compatible result cache (``cniCacheV1``), written atomically (R-CNI-13)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KIND = "cniCacheV1"


@dataclass(frozen=True)
class CachedAttachment:
    """What ADD recorded for one (network, container, ifname), enough to DEL/CHECK/GC it later."""

    network_name: str
    container_id: str
    ifname: str
    netns: str = ""
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)
    config: bytes = b""
    result: dict[str, Any] | None = None
    path: str = ""


class CorruptCache(Exception):
    """A cache file that cannot be decoded (zero-length after power loss, garbage, ...)."""


def results_dir(cache_dir: str) -> str:
    return os.path.join(cache_dir, "results")


def cache_path(cache_dir: str, network: str, container_id: str, ifname: str) -> str:
    return os.path.join(results_dir(cache_dir), f"{network}-{container_id}-{ifname}")


def write(att: CachedAttachment, cache_dir: str, *, durable: bool = True) -> str:
    """Persist atomically (temp file, rename): never a half-written file. `durable` adds the fsyncs of the
    file and its directory; a caller that makes the file durable itself (a group commit) passes False."""
    directory = results_dir(cache_dir)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    doc = {
        "kind": KIND,
        "containerId": att.container_id,
        "config": base64.b64encode(att.config).decode(),
        "ifName": att.ifname,
        "networkName": att.network_name,
        "netns": att.netns,
        "cniArgs": [list(kv) for kv in att.cni_args],
        "capabilityArgs": dict(att.capability_args),
        "result": att.result,
    }
    path = cache_path(cache_dir, att.network_name, att.container_id, att.ifname)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def _decode(data: bytes, path: str) -> CachedAttachment:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCache(f"{path}: {e}") from None
    if not isinstance(doc, dict):
        raise CorruptCache(f"{path}: not a JSON object")
    if doc.get("kind") != KIND:
        if "cniVersion" not in doc:
            raise CorruptCache(f"{path}: neither a {KIND} record nor a legacy result")
        return CachedAttachment("", "", "", result=doc, path=path)
    try:
        config = base64.b64decode(doc.get("config") or "", validate=True)
        args = tuple((str(k), str(v)) for k, v in doc.get("cniArgs") or ())
    except (ValueError, TypeError) as e:
        raise CorruptCache(f"{path}: {e}") from None
    result = doc.get("result")
    caps = doc.get("capabilityArgs") or {}
    if (result is not None and not isinstance(result, dict)) or not isinstance(caps, dict):
        raise CorruptCache(f"{path}: malformed result or capabilityArgs")
    return CachedAttachment(
        network_name=str(doc.get("networkName") or ""),
        container_id=str(doc.get("containerId") or ""),
        ifname=str(doc.get("ifName") or ""),
        netns=str(doc.get("netns") or ""),
        cni_args=args,
        capability_args=caps,
        config=config,
        result=result,
        path=path,
    )


def read(path: str) -> CachedAttachment | None:
    """The record at ``path``, None if absent; raises :class:`CorruptCache` if undecodable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return _decode(data, path)


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def list_attachments(cache_dir: str, container_id: str = "") -> list[CachedAttachment]:
    """Every decodable cniCacheV1 record, optionally only those of ``container_id``."""
    try:
        names = sorted(os.listdir(results_dir(cache_dir)))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.startswith(".tmp-") or (container_id and f"-{container_id}-" not in name):
            continue
        try:
            att = read(os.path.join(results_dir(cache_dir), name))
        except (CorruptCache, OSError):
            continue
        if att is None or not att.network_name:
            continue
        if container_id and att.container_id != container_id:
            continue
        out.append(att)
    return out
