"""ImageManager: pulls, names, removes images and hands out container root filesystems.

One process owns a store (a lock file enforces it). Within the process, one asyncio lock orders changes of
the index against garbage collection; content being fetched or unpacked is pinned so a concurrent removal
cannot collect it, and each blob or layer is fetched or unpacked once however many pulls want it.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from crishim.config import ImagesSection
from crishim.errors import CrishimError, FailedPrecondition, InvalidArgument, NotFound
from crishim.image import reference
from crishim.image.archive import DOCKER_LAYER, ArchiveImage, ImportMonitor, read_archive
from crishim.image.reference import Reference
from crishim.image.registry import (
    INDEX_TYPES,
    MAX_MANIFEST_BYTES,
    ContentMismatch,
    EndpointError,
    EndpointNotFound,
    HttpPool,
    RegistryAuth,
    RegistryClient,
)
from crishim.image.registry_config import load_host_config
from crishim.image.rootfs import Rootfs
from crishim.image.store import INDEX_VERSION, WRITEBACK_STEP, Store, sha256_digest, start_writeback
from crishim.image.unpack import DiskUsage, Feed, Unpacked, disk_usage, unpack_fed, unpack_layer
from crishim.store import write_bytes_atomic
from crishim.telemetry import observe_pull
from crishim.threads import run_in_thread

log = logging.getLogger(__name__)
T = TypeVar("T")

_PARALLEL_LAYERS = 3
_SHORT_ID_MIN = 12
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class Layer:
    digest: str  # of the blob as stored (usually compressed)
    diff_id: str  # of the uncompressed tar, from the image config
    size: int
    media_type: str


@dataclass(frozen=True)
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int


@dataclass
class ImageRecord:
    id: str  # the config's digest
    repo_tags: list[str]
    repo_digests: list[str]
    size: int
    spec: dict[str, Any]  # the whole OCI image config JSON (architecture, os, config, rootfs, …)
    manifest_digest: str
    layers: list[Layer]
    blobs: dict[str, int] = field(default_factory=dict)  # every blob kept for this image → size

    @property
    def config(self) -> dict[str, Any]:
        """The execution parameters: Entrypoint, Cmd, Env, WorkingDir, User, StopSignal, …"""
        value = self.spec.get("config") or {}
        return value if isinstance(value, dict) else {}

    @property
    def user(self) -> str:
        return str(self.config.get("User") or "")

    @property
    def uid(self) -> int | None:
        """The numeric user the image runs as, when `User` names one by number."""
        name = self.user.split(":", 1)[0]
        return int(name) if name.isdigit() else None

    @property
    def username(self) -> str:
        """The user name the image runs as, when `User` names one by name."""
        name = self.user.split(":", 1)[0]
        return "" if name.isdigit() else name

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "repo_tags": self.repo_tags, "repo_digests": self.repo_digests,
                "size": self.size, "manifest_digest": self.manifest_digest,
                "layers": [vars(layer) for layer in self.layers], "blobs": self.blobs}

    @classmethod
    def from_json(cls, data: dict[str, Any], spec: dict[str, Any]) -> ImageRecord:
        return cls(id=data["id"], repo_tags=list(data["repo_tags"]),
                   repo_digests=list(data["repo_digests"]), size=data["size"], spec=spec,
                   manifest_digest=data["manifest_digest"],
                   layers=[Layer(**layer) for layer in data["layers"]], blobs=dict(data["blobs"]))


@dataclass(frozen=True)
class ImageContent:
    """What a pull or an import found, ready to be committed under names."""

    top_digest: str  # what the name resolved to (an index or a manifest); "" when unknown
    manifest_digest: str
    spec_bytes: bytes
    layers: list[Layer]
    blobs: dict[str, int]


def host_platform() -> tuple[str, str]:
    machine = platform.machine()
    return "linux", _ARCH.get(machine, machine)


def _descriptor(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("digest"), str) \
            or not isinstance(data.get("size"), int) or not reference.is_digest(data["digest"]):
        raise InvalidArgument(f"{what}: malformed descriptor {data!r}")
    return data


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return value


def choose_platform(index: dict[str, Any], what: str) -> dict[str, Any]:
    """The index entry for this host's OS and architecture."""
    os_name, arch = host_platform()
    entries = [_descriptor(m, what) for m in index.get("manifests") or []]
    seen = []
    for entry in entries:
        plat = entry.get("platform") or {}
        seen.append(f"{plat.get('os', '?')}/{plat.get('architecture', '?')}")
        if plat.get("os") == os_name and plat.get("architecture") == arch:
            return entry
    raise NotFound(f"{what} has no image for {os_name}/{arch} (it has {', '.join(seen) or 'none'})")


def parse_manifest(body: bytes, what: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The config descriptor and layer descriptors of a Docker schema 2 or OCI manifest."""
    manifest = _json(body, what)
    if manifest.get("schemaVersion") != 2:
        raise InvalidArgument(f"{what}: only schema version 2 manifests are supported "
                              "(Docker schema 1 images must be re-pushed)")
    config = _descriptor(manifest.get("config"), f"{what} config")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument(f"{what}: no layers list")
    return config, [_descriptor(layer, f"{what} layer") for layer in layers]


def layers_from(spec: dict[str, Any], descriptors: list[dict[str, Any]], what: str) -> list[Layer]:
    rootfs = spec.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(descriptors) \
            or not all(isinstance(d, str) and reference.is_digest(d) for d in diff_ids):
        raise InvalidArgument(f"{what}: the config's rootfs.diff_ids do not match the "
                              f"{len(descriptors)} layers of the manifest")
    return [Layer(digest=d["digest"], diff_id=diff_id, size=d["size"],
                  media_type=str(d.get("mediaType", ""))) for d, diff_id in zip(descriptors, diff_ids,
                                                                                strict=True)]


class ImageManager:
    def __init__(self, root: Path, registry_config_dir: str | Path | None = None,
                 pull_progress_timeout: float = ImagesSection.pull_progress_timeout) -> None:
        self.store = Store(root)
        self.registry_config_dir = Path(registry_config_dir) if registry_config_dir else None
        self.pull_progress_timeout = pull_progress_timeout
        self._http = HttpPool()
        self._images: dict[str, ImageRecord] = {}
        self._layer_usage: dict[str, DiskUsage] = {}
        self._rootfs: dict[str, tuple[Rootfs, list[str]]] = {}
        self._lock = asyncio.Lock()
        self._pins: collections.Counter[str] = collections.Counter()
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._waiters: collections.Counter[asyncio.Future[Any]] = collections.Counter()
        self._abandoned: set[asyncio.Future[Any]] = set()  # cancelled for want of waiters, still unwinding
        self._blob_fetches_ended = 0  # a count: a pull that looked before it changed looks again
        self._in_use: Callable[[str], bool] = lambda _image_id: False
        self._lock_fd: int | None = None

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the store, load the index and drop what an interrupted run left half done."""
        self._http.warm_up()
        await asyncio.to_thread(self._open)
        await self._collect()

    def _open(self) -> None:
        self.store.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.store.root / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise FailedPrecondition(f"another process uses the image store {self.store.root}") \
                from exc
        self._lock_fd = fd
        self.store.setup()
        index = self.store.load_index()
        for entry in index["images"]:
            try:
                spec = _json(self.store.read_blob(entry["id"]), f"config {entry['id']}")
            except (OSError, InvalidArgument) as exc:
                log.warning("dropping image %s from the index: %s", entry["id"], exc)
                continue
            record = ImageRecord.from_json(entry, spec)
            self._images[record.id] = record
        self._layer_usage = {k: DiskUsage(**v) for k, v in index["layers"].items()}
        for path in self.store.rootfs.glob("*.json"):
            data = json.loads(path.read_bytes())
            self._rootfs[path.stem] = (self._make_rootfs(data["layers"], Path(data["dir"]),
                                                         data.get("readonly", False)),
                                       data["layers"])

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            self._abandon(task)
        await self._http.aclose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def set_in_use_checker(self, fn: Callable[[str], bool]) -> None:
        """`fn(image_id)` says whether a container uses the image; such an image cannot be removed."""
        self._in_use = fn

    # --- lookups ----------------------------------------------------------------------------------

    def get(self, ref_or_id: str) -> ImageRecord | None:
        """By id (full or a unique prefix of 12+ hex digits), by any tag or digest, or short name."""
        image_id = reference.as_image_id(ref_or_id)
        if image_id is not None:
            return self._images.get(image_id)
        try:
            ref = reference.parse(ref_or_id)
        except InvalidArgument:
            ref = None
        if ref is not None:
            for record in self._images.values():
                if (ref.digest and ref.digested in record.repo_digests) or \
                        (not ref.digest and ref.tagged in record.repo_tags):
                    return record
        prefix = ref_or_id.removeprefix("sha256:")
        if len(prefix) >= _SHORT_ID_MIN and all(c in "0123456789abcdef" for c in prefix):
            found = [r for r in self._images.values() if r.id[7:].startswith(prefix)]
            if len(found) == 1:
                return found[0]
        return None

    def digested_ref(self, image_id: str, name: str = "") -> str:
        """What ContainerStatus.image_ref reports, as containerd does (kubelet shows it as the pod's
        `imageID`): a repo digest of the image, the one in `name`'s repository first; else the id (an
        image stored with no digest, or removed since)."""
        record = self._images.get(image_id)
        if record is None or not record.repo_digests:
            return image_id
        if len(record.repo_digests) > 1:
            with contextlib.suppress(InvalidArgument):
                repository = f"{reference.parse(name).name}@"
                for digested in record.repo_digests:
                    if digested.startswith(repository):
                        return digested
        return record.repo_digests[0]

    def list(self, filter_ref: str = "") -> list[ImageRecord]:
        if filter_ref:
            record = self.get(filter_ref)
            return [record] if record else []
        return sorted(self._images.values(), key=lambda r: (r.repo_tags[:1], r.id))

    def fs_usage(self) -> FsUsage:
        blobs: dict[str, int] = {}
        layers: set[str] = set()
        for record in self._images.values():
            blobs.update(record.blobs)
            layers.update(layer.diff_id for layer in record.layers)
        usage = [self._layer_usage[d] for d in layers if d in self._layer_usage]
        return FsUsage(mountpoint=str(self.store.root),
                       used_bytes=sum(blobs.values()) + sum(u.bytes for u in usage),
                       inodes_used=len(blobs) + sum(u.inodes for u in usage))

    # --- pulling ----------------------------------------------------------------------------------

    async def pull(self, ref: str, auth: RegistryAuth | None = None) -> ImageRecord:
        """Fetch `ref` from its registry (mirrors first) and store it under that name."""
        started = time.perf_counter()
        parsed = reference.parse(ref)
        host = await asyncio.to_thread(load_host_config, self.registry_config_dir, parsed.domain)
        await self._http.warmed()
        failures: list[CrishimError] = []
        for endpoint in host.endpoints():
            client = RegistryClient(endpoint, parsed.path, auth, self._http, self.pull_progress_timeout)
            try:
                record = await self._fetch(client, parsed)
            except (EndpointError, EndpointNotFound) as exc:
                log.info("pull of %s from %s failed: %s", parsed, endpoint.url, exc)
                failures.append(exc)
                continue
            except BaseException:
                await asyncio.shield(self._collect())  # what the failed pull stored is garbage
                raise
            finally:
                await client.aclose()
            observe_pull(time.perf_counter() - started, record.size)
            return record
        await self._collect()
        last = failures[-1]
        detail = "; ".join(str(f) for f in failures)
        if isinstance(last, EndpointNotFound):
            raise NotFound(f"image {parsed} not found: {detail}") from last
        raise type(last)(f"pulling {parsed}: {detail}") from last

    async def _fetch(self, client: RegistryClient, ref: Reference) -> ImageRecord:
        """Fetch what `ref` names and name it. The config and the layers are fetched at once, each layer
        unpacked as it arrives and named after the digest of what it unpacked to; the diff_id the config
        lists for it is checked once both are in."""
        body, media_type = await client.manifest(ref.object)
        top_digest = sha256_digest(body)
        if ref.digest and top_digest != ref.digest:
            raise ContentMismatch(f"{client.endpoint.url} served manifest {top_digest} for {ref}")
        blobs = {top_digest: len(body)}
        manifests = {top_digest: body}
        what = f"manifest of {ref}"
        for _ in range(3):
            probe = _json(body, what)
            if media_type not in INDEX_TYPES and "manifests" not in probe:
                break
            chosen = choose_platform(probe, f"image index of {ref}")
            body, media_type = await client.manifest(chosen["digest"])
            digest = sha256_digest(body)
            if digest != chosen["digest"] or len(body) != chosen["size"]:
                raise ContentMismatch(f"{client.endpoint.url} served manifest {digest} for "
                                      f"{chosen['digest']}")
            blobs[digest] = len(body)
            manifests[digest] = body
        else:
            raise InvalidArgument(f"{what}: image indexes nest too deeply")
        manifest_digest = sha256_digest(body)
        config_desc, layer_descs = parse_manifest(body, what)
        async with self._pin_scope() as pin:
            await pin([config_desc["digest"], *blobs, *(d["digest"] for d in layer_descs)])
            # What is stored already, in one look: every layer's request can then go out at once.
            descs = [config_desc, *layer_descs]
            ended = self._blob_fetches_ended
            stored = await asyncio.to_thread(self._stored_sizes, descs)

            async def stored_size(index: int) -> int | None:
                """What that look found for `descs[index]`, brought up to date (`_look_again`)."""
                return await self._look_again(descs[index]["digest"], ended, stored[index])

            async def known() -> tuple[bytes, list[Layer]]:
                spec_bytes = await self._config(client, config_desc, await stored_size(0))
                layers = layers_from(_json(spec_bytes, f"config of {ref}"), layer_descs, what)
                await pin([layer.diff_id for layer in layers])
                return spec_bytes, layers

            limit = asyncio.Semaphore(_PARALLEL_LAYERS)

            async def one(index: int, desc: dict[str, Any]) -> None:
                async with limit:
                    unpacked = await self._fetch_layer(client, desc, await stored_size(index + 1))
                    layer = (await asyncio.shield(config))[1][index]
                    if unpacked is not None:
                        unpacked.check(layer.diff_id, layer.digest)
                    if unpacked is None or layer.diff_id not in self._layer_usage:  # else just named
                        await self._ensure_layer(layer)

            def put_manifests() -> None:
                for digest, data in manifests.items():
                    self.store.put_blob(digest, data)

            async def metadata() -> None:
                """Manifests and config stored while the layers download: each is in the store before
                `_commit` names the image, and off the pull's critical path."""
                await asyncio.to_thread(put_manifests)
                await asyncio.shield(config)
                await self._ensure_blob(client, config_desc)

            # The layers' requests go out first: they are the pull's critical path, the config is small.
            fetches = [asyncio.ensure_future(one(n, desc)) for n, desc in enumerate(layer_descs)]
            config = asyncio.ensure_future(known())
            # Everything settles before the pull answers: a failed layer must not leave a sibling still
            # unpacking (or the config still being written) behind the garbage collection that follows
            # the error.
            outcomes = await asyncio.gather(*fetches, config, metadata(), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            spec_bytes, layers = config.result()
            blobs[config_desc["digest"]] = config_desc["size"]
            blobs.update((layer.digest, layer.size) for layer in layers)
            content = ImageContent(top_digest=top_digest, manifest_digest=manifest_digest,
                                   spec_bytes=spec_bytes, layers=layers, blobs=blobs)
            return await self._commit(content, ref)  # still pinned: no collection between

    @contextlib.asynccontextmanager
    async def _pin_scope(self) -> AsyncIterator[Callable[[Iterable[str]], Awaitable[None]]]:
        """`await pin(digests)` keeps those blobs or layers from garbage collection until the scope
        ends. A pin is taken under the lock: once it is, no collection that missed it is still running."""
        held: collections.Counter[str] = collections.Counter()
        open_ = True

        async def pin(digests: Iterable[str]) -> None:
            keys = [d.removeprefix("sha256:") for d in digests]
            async with self._lock:
                if not open_:
                    raise asyncio.CancelledError("pinned after its scope ended")
                self._pins.update(keys)
                held.update(keys)

        try:
            yield pin
        finally:
            open_ = False
            self._pins.subtract(held)
            self._pins += collections.Counter()  # drop zero counts

    @contextlib.asynccontextmanager
    async def _pinned(self, digests: Iterable[str]) -> AsyncIterator[None]:
        """Keep `digests` (blobs or layers) from garbage collection while a pull needs them."""
        async with self._pin_scope() as pin:
            await pin(digests)
            yield

    def _start_once(self, key: str, factory: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The task running `factory` for `key`, started unless one runs already."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(factory())
            self._inflight[key] = task

            def done(t: asyncio.Future[T]) -> None:
                self._inflight.pop(key, None)
                self._abandoned.discard(t)
                if key.startswith("blob:"):
                    self._blob_fetches_ended += 1
                if not t.cancelled():
                    t.exception()  # retrieved here so an abandoned failure is not logged as lost

            task.add_done_callback(done)
        return task

    async def _once(self, key: str, factory: Callable[[], Awaitable[T]]) -> T:
        """Run `factory` once for concurrent callers asking for the same `key`. A caller cancelled (its
        client gave up) leaves the work to the others; the last one's cancellation cancels it, as
        containerd's pull ends with its request, and returns once it has unwound (what it leaves is
        cleared): a retry then starts afresh rather than joining, say, a download stalled on a dead
        connection."""
        task = self._start_once(key, factory)
        while task in self._abandoned:  # a newcomer while the last caller's cancellation unwinds
            await asyncio.wait([task])
            task = self._start_once(key, factory)
        self._waiters[task] += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if self._waiters[task] == 1 and not task.done():
                self._abandon(task)
                await asyncio.wait([task])
            raise
        finally:
            self._waiters[task] -= 1
            if not self._waiters[task]:
                del self._waiters[task]

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        """Cancel shared work once: a second cancellation would cut short the cleanup of the first."""
        if task not in self._abandoned:
            self._abandoned.add(task)
            task.cancel()

    async def _config(self, client: RegistryClient, desc: dict[str, Any], stored: int | None) -> bytes:
        """The config's bytes (`stored`: the size of the stored blob, if any). Unless stored or on its
        way to the store already, it is fetched into memory (no thread hop per chunk, no disk on the way)
        and its storing is started: the pull awaits that in `_ensure_blob` before naming the image."""
        digest, size = desc["digest"], desc["size"]
        if stored is not None or size > MAX_MANIFEST_BYTES or f"blob:{digest}" in self._inflight:
            await self._ensure_blob(client, desc)
            return await asyncio.to_thread(self.store.read_blob, digest)

        async def fetch() -> bytes:
            async with client.blob(digest, size) as chunks:
                data = b"".join([chunk async for chunk in chunks])  # exactly `size` bytes
            actual = sha256_digest(data)
            if actual != digest:
                raise ContentMismatch(f"{client.endpoint.url} served bytes with digest {actual} for "
                                      f"blob {digest}: not stored")
            # Registered before this task ends, so no pull sees neither fetch nor store under way.
            self._start_once(f"blob:{digest}", lambda: asyncio.to_thread(self.store.put_blob, digest, data))
            return data

        return await self._once(f"config:{digest}", fetch)

    def _stored_size(self, digest: str) -> int | None:
        try:
            return self.store.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def _stored_sizes(self, descs: Iterable[dict[str, Any]]) -> builtins.list[int | None]:
        return [self._stored_size(desc["digest"]) for desc in descs]

    async def _look_again(self, digest: str, seen: int, size: int | None) -> int | None:
        """`size`: what a look at `digest`'s blob found, started when `seen` blob fetches had ended. Looked
        at again while more have ended since (one may have stored it as the look ran), so a caller that
        starts its fetch right after, awaiting nothing in between, never fetches a blob that another pull
        has just stored."""
        while size is None and seen != self._blob_fetches_ended:
            seen = self._blob_fetches_ended
            size = await asyncio.to_thread(self._stored_size, digest)
        return size

    async def _ensure_blob(self, client: RegistryClient, desc: dict[str, Any]) -> None:
        """Download the blob unless stored; either way its size must be the one `desc` declares."""
        digest, size = desc["digest"], desc["size"]
        seen = self._blob_fetches_ended
        stored = await self._look_again(digest, seen, await asyncio.to_thread(self._stored_size, digest))
        if stored is None:
            await self._once(f"blob:{digest}", lambda: self._download(client, digest, size))
            stored = (await asyncio.to_thread(self.store.blob_path(digest).stat)).st_size
        _check_size(client, digest, size, stored)

    async def _fetch_layer(self, client: RegistryClient, desc: dict[str, Any], stored: int | None
                           ) -> Unpacked | None:
        """The layer's blob stored (`stored`: its size if it was already); downloaded and unpacked at
        once (what it unpacked to returned) unless it was stored or on its way already."""
        digest, size = desc["digest"], desc["size"]
        if stored is not None:
            _check_size(client, digest, size, stored)
            return None
        fetched = await self._once(f"blob:{digest}",
                                   lambda: self._download(client, digest, size, unpack=True))
        if not isinstance(fetched, _Downloaded):  # stored by the config's fetch (a config as a layer)
            await self._ensure_blob(client, desc)
            return None
        _check_size(client, digest, size, fetched.size)  # another pull's fetch may have declared another
        return fetched.unpacked

    async def _download(self, client: RegistryClient, digest: str, size: int, unpack: bool = False
                        ) -> _Downloaded:
        """Store the blob (the caller found it missing); with `unpack`, unpack it too as it arrives (in a
        thread, fed through a `Feed`) and name the layer after the digest of what it unpacked to, once
        the blob's digest is right: download, hashing, decompression and extraction overlap instead of
        following one another, and none waits for the image config."""
        ingest = _Ingest(self.store, digest, client.endpoint.url, Feed() if unpack else None)
        layer_tmp = self.store.layer_tmp(digest)
        feed = ingest.feed
        # A thread of its own, not the shared pool: it waits on the registry, and a few registries that
        # stall (or trickle) would otherwise hold every pooled thread, and every RPC that needs one.
        unpacking = None if feed is None else \
            asyncio.ensure_future(run_in_thread(lambda: unpack_fed(feed, layer_tmp, digest)))
        stored = named = False
        try:
            async with client.blob(digest, size) as chunks:
                async for chunk in chunks:
                    await _in_thread(ingest.take, chunk)
            await _in_thread(ingest.commit)
            stored = True
            if unpacking is None:
                return _Downloaded(size, None)
            unpacked = await asyncio.shield(unpacking)  # a cancellation waits for it below
            async with self._pinned([unpacked.diff_id]):  # no collection while the layer is named
                named = await _in_thread(self.store.commit_layer, layer_tmp, unpacked.diff_id)
                self._layer_usage.setdefault(unpacked.diff_id, unpacked.usage)
            return _Downloaded(size, unpacked)
        finally:
            if not stored:
                await asyncio.to_thread(ingest.drop)
            if unpacking is not None and not named:  # failed, or the same layer was there already
                await asyncio.wait([unpacking])  # the thread ends once the feed has ended
                if not unpacking.cancelled():
                    unpacking.exception()  # a download error explains a truncated layer better
                await asyncio.to_thread(shutil.rmtree, layer_tmp, True)

    def _layer_ready(self, layer: Layer) -> bool:
        return self.store.layer_path(layer.diff_id).exists() and layer.diff_id in self._layer_usage

    async def _ensure_layer(self, layer: Layer) -> None:
        if not await asyncio.to_thread(self._layer_ready, layer):
            await self._once(f"layer:{layer.diff_id}", lambda: self._unpack(layer))

    async def _unpack(self, layer: Layer) -> None:
        final = self.store.layer_path(layer.diff_id)
        if await asyncio.to_thread(final.exists):
            self._layer_usage[layer.diff_id] = await asyncio.to_thread(disk_usage, final)
            return
        tmp = self.store.layer_tmp(layer.diff_id)
        try:
            usage = await _in_thread(unpack_layer, self.store.blob_path(layer.digest), tmp, layer.diff_id)
            await _in_thread(self.store.commit_layer, tmp, layer.diff_id)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
        self._layer_usage[layer.diff_id] = usage

    async def _commit(self, content: ImageContent, ref: Reference | None,
                      extra_names: Iterable[Reference] = ()) -> ImageRecord:
        """Name the image in the index: from now on it exists."""
        image_id = sha256_digest(content.spec_bytes)
        spec = _json(content.spec_bytes, f"config {image_id}")
        async with self._lock:
            record = self._images.get(image_id)
            if record is None:
                size = sum(layer.size for layer in content.layers) + len(content.spec_bytes)
                record = ImageRecord(id=image_id, repo_tags=[], repo_digests=[], size=size,
                                     spec=spec, manifest_digest=content.manifest_digest,
                                     layers=content.layers)
            record.blobs.update(content.blobs)
            for name in [*([ref] if ref else []), *extra_names]:
                self._name(record, name, content)
            self._images[image_id] = record
            await asyncio.to_thread(self.store.save_index, self._index_data(), True)
        return record

    def _name(self, record: ImageRecord, ref: Reference, content: ImageContent) -> None:
        if ref.tag:
            for other in self._images.values():
                if other is not record and ref.tagged in other.repo_tags:
                    other.repo_tags.remove(ref.tagged)
            if ref.tagged not in record.repo_tags:
                record.repo_tags.append(ref.tagged)
        top = ref.digest or content.top_digest
        if top and f"{ref.name}@{top}" not in record.repo_digests:
            record.repo_digests.append(f"{ref.name}@{top}")

    def _index_data(self) -> dict[str, Any]:
        return {"version": INDEX_VERSION, "images": [r.to_json() for r in self._images.values()],
                "layers": {k: vars(v) for k, v in self._layer_usage.items()}}

    # --- importing --------------------------------------------------------------------------------

    async def import_archive(self, source: Path | IO[bytes], monitor: ImportMonitor | None = None
                             ) -> builtins.list[ImageRecord]:
        """Load every image of an OCI layout (directory or tar) or `docker save` tar, given as a path
        or a stream, into the store. A failure or cancellation leaves neither scratch files nor a
        half-stored image; importing an image again only adds names."""
        monitor = monitor or ImportMonitor()
        scratch = self.store.ingest / f"import-{secrets.token_hex(8)}"
        try:
            # A thread of its own, not the shared pool: a stream is paced by its client (as a layer by
            # its registry, see _download).
            found = await run_in_thread(lambda: read_archive(source, scratch, choose_platform, monitor))
            what = f"image in {source}" if isinstance(source, Path) else "image in the archive stream"
            return [await self._import_one(image, what, scratch, monitor) for image in found]
        except BaseException:
            await asyncio.shield(self._collect())
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _import_one(self, image: ArchiveImage, what: str, scratch: Path, monitor: ImportMonitor
                          ) -> ImageRecord:
        async def put(path: Path, expected: str = "") -> tuple[str, int]:
            """Unpacked archives are linked into the store; a layout directory (the user's) is copied."""
            return await asyncio.to_thread(self.store.put_file, path, expected, path.is_relative_to(scratch))

        spec_bytes = await asyncio.to_thread(image.config_path.read_bytes)
        spec = _json(spec_bytes, f"config of the {what}")
        if image.manifest is not None:
            descs = parse_manifest(json.dumps(image.manifest).encode(), what)[1]
        else:
            diff_ids = (spec.get("rootfs") or {}).get("diff_ids") or []
            descs = [{"digest": d, "size": 0} for d in diff_ids]
        expected = [str(d["digest"]) for d in descs]
        if len(expected) != len(image.layer_paths):
            raise InvalidArgument(f"{what}: {len(image.layer_paths)} layer files for "
                                  f"{len(expected)} layers")
        async with self._pinned([sha256_digest(spec_bytes), *expected]):
            blobs: dict[str, int] = {}
            manifest_digest = ""
            for manifest_path in image.manifest_paths:
                manifest_digest, size = await put(manifest_path)
                blobs[manifest_digest] = size
            config_digest, size = await put(image.config_path)
            blobs[config_digest] = size
            sized = []
            for digest, layer_path in zip(expected, image.layer_paths, strict=True):
                monitor.check()
                _, size = await put(layer_path, digest)
                blobs[digest] = size
                sized.append({"digest": digest, "size": size, "mediaType": DOCKER_LAYER})
            layers = layers_from(spec, sized if image.manifest is None else descs, what)
            async with self._pinned([layer.diff_id for layer in layers]):
                for number, layer in enumerate(layers, 1):
                    monitor.check()
                    await self._ensure_layer(layer)
                    monitor.report({"event": "layer", "number": number, "count": len(layers),
                                    "diff_id": layer.diff_id, "size": blobs[layer.digest]})
                monitor.check()  # the last moment a cancellation can still keep the image out
                content = ImageContent(top_digest=image.top_digest, manifest_digest=manifest_digest,
                                       spec_bytes=spec_bytes, layers=layers, blobs=blobs)
                names = [reference.parse(name) for name in image.names]
                record = await self._commit(content, None, names)
        monitor.report({"event": "image", "id": record.id, "names": image.names})
        return record

    # --- removal ----------------------------------------------------------------------------------

    async def remove(self, ref: str) -> None:
        """Remove the image `ref` names, with all its names; an unknown image is no error."""
        async with self._lock:
            record = self.get(ref)
            if record is None:
                return
            if self._in_use(record.id):
                raise FailedPrecondition(f"image {ref} ({record.id}) is in use by a container; "
                                         "remove the container first")
            del self._images[record.id]
            await asyncio.to_thread(self.store.save_index, self._index_data())
            await self._collect_locked()

    async def _collect(self) -> None:
        async with self._lock:
            await self._collect_locked()

    async def _collect_locked(self) -> None:
        blobs = {d.removeprefix("sha256:") for r in self._images.values() for d in r.blobs}
        layers = {layer.diff_id.removeprefix("sha256:")
                  for r in self._images.values() for layer in r.layers}
        for _rootfs, diff_ids in self._rootfs.values():
            layers.update(d.removeprefix("sha256:") for d in diff_ids)
        pinned = set(self._pins)
        await asyncio.to_thread(self.store.collect, blobs | pinned, layers | pinned)
        kept = {f"sha256:{hex_}" for hex_ in layers | pinned}
        self._layer_usage = {k: v for k, v in self._layer_usage.items() if k in kept}

    # --- container root filesystems ---------------------------------------------------------------

    def _make_rootfs(self, diff_ids: Sequence[str], container_dir: Path, readonly: bool = False
                     ) -> Rootfs:
        lower = [self.store.layer_path(d) for d in reversed(diff_ids)] or [self.store.empty_layer]
        if readonly:
            # Without an upper dir overlayfs needs two lower dirs; the empty layer pads a single one.
            return Rootfs(lower_dirs=[*lower, self.store.empty_layer], upper_dir=None, work_dir=None,
                          merged=container_dir / "rootfs")
        return Rootfs(lower_dirs=lower, upper_dir=container_dir / "upper",
                      work_dir=container_dir / "work", merged=container_dir / "rootfs")

    async def prepare_rootfs(self, image_id: str, container_id: str, container_dir: Path,
                             readonly: bool = False) -> Rootfs:
        """Directories for the container's overlay (with no writable layer when `readonly`); its
        layers stay until `release_rootfs`."""
        async with self._lock:
            known = self._rootfs.get(container_id)
            if known is not None:
                return known[0]
            record = self._images.get(image_id)
            if record is None:
                raise NotFound(f"image {image_id} not found")
            diff_ids = [layer.diff_id for layer in record.layers]
            if readonly and not diff_ids:
                raise FailedPrecondition(f"image {image_id} has no layers to mount")
            rootfs = self._make_rootfs(diff_ids, container_dir, readonly)
            data = json.dumps({"image": image_id, "layers": diff_ids, "dir": str(container_dir),
                               "readonly": readonly})

            def setup() -> None:
                for path in _own_dirs(rootfs):
                    path.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(self.store.rootfs / f"{container_id}.json", data.encode())

            await asyncio.to_thread(setup)
            self._rootfs[container_id] = (rootfs, diff_ids)
            return rootfs

    async def prepare_image_volume(self, ref: str, container_id: str, index: int,
                                   directory: Path) -> tuple[Rootfs, str]:
        """A read-only overlay of the image `ref` names (id, tag or digest) for the container's
        `index`th mount, and the image's id; it stays until `release_image_volumes`."""
        record = self.get(ref)
        if record is None:
            raise NotFound(f"image {ref!r} not found: pull it first")
        volume = await self.prepare_rootfs(record.id, _volume_key(container_id, index), directory,
                                           readonly=True)
        return volume, record.id

    async def release_image_volumes(self, container_id: str) -> None:
        """Unmount and delete every image volume of the container; none is no error."""
        prefix = _volume_key(container_id, "")
        for key in [k for k in self._rootfs if k.startswith(prefix)]:
            await self.release_rootfs(key)

    async def release_rootfs(self, container_id: str) -> None:
        """Unmount and delete the container's writable layer; unknown ids are no error.

        The store is collected only when this rootfs held the last reference to a layer (its image was
        removed while the container lived): removing containers of live images never scans the store.
        """
        known = self._rootfs.get(container_id)
        if known is None:
            return
        rootfs, diff_ids = known
        await rootfs.unmount()

        def cleanup() -> None:
            for path in _own_dirs(rootfs):
                shutil.rmtree(path, ignore_errors=True)
            (self.store.rootfs / f"{container_id}.json").unlink(missing_ok=True)

        await asyncio.to_thread(cleanup)
        async with self._lock:
            if self._rootfs.pop(container_id, None) is None:
                return
            still_used = {layer.diff_id for r in self._images.values() for layer in r.layers}
            still_used.update(d for _rootfs, ids in self._rootfs.values() for d in ids)
            if not set(diff_ids) <= still_used:
                await self._collect_locked()


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread. A cancellation waits for it to return before it goes on: the code
    it unwinds (dropping an ingest, removing a scratch dir) never races a thread still writing there."""
    work = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        work.exception()  # retrieved: the cancellation is what goes on
        raise


class _Ingest:
    """One blob on its way into the store; the methods block (worker threads). Written and hashed as it
    arrives (and handed to an unpacking thread through `feed`), committed under its digest only if that is
    the one asked for (`source` names who served it)."""

    def __init__(self, store: Store, digest: str, source: str, feed: Feed | None) -> None:
        self.store, self.digest, self.source, self.feed = store, digest, source, feed
        self.tmp = store.ingest_path(digest)
        self.hasher = hashlib.sha256()
        self._out: IO[bytes] | None = None
        self._unflushed = 0

    def _file(self) -> IO[bytes]:
        if self._out is None:  # opened here, by the first bytes: no thread hop before the request
            self._out = open(self.tmp, "wb", buffering=0)  # noqa: SIM115 - closed by commit or drop
        return self._out

    def take(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        out = self._file()
        out.write(chunk)
        self._unflushed += len(chunk)
        if self._unflushed >= WRITEBACK_STEP:
            start_writeback(out.fileno())
            self._unflushed = 0
        if self.feed is not None:
            self.feed.put(chunk)

    def commit(self) -> None:
        if self.feed is not None:
            self.feed.end()
        out = self._file()
        start_writeback(out.fileno())
        out.close()
        actual = f"sha256:{self.hasher.hexdigest()}"
        if actual != self.digest:
            raise ContentMismatch(f"{self.source} served bytes with digest {actual} for blob {self.digest}: "
                                  "not stored")
        self.store.commit_ingest(self.tmp, self.digest)

    def drop(self) -> None:
        if self.feed is not None:
            self.feed.end()  # blocks while the feed is full
        if self._out is not None:
            self._out.close()
        self.tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Downloaded:
    """A blob a pull downloaded: its size, and what it unpacked to when it was a layer unpacked on the way."""

    size: int
    unpacked: Unpacked | None


def _check_size(client: RegistryClient, digest: str, declared: int, stored: int) -> None:
    if stored != declared:
        raise ContentMismatch(f"the manifest from {client.endpoint.url} declares {declared} bytes for "
                              f"blob {digest}, the stored blob of that digest has {stored}")


def _volume_key(container_id: str, index: int | str) -> str:
    """Image volumes are kept like container rootfs, under the container's id and the mount's index."""
    return f"{container_id}-volume-{index}"


def _own_dirs(rootfs: Rootfs) -> list[Path]:
    """The directories a container's overlay has to itself (the layers are shared)."""
    return [p for p in (rootfs.upper_dir, rootfs.work_dir, rootfs.merged) if p is not None]
