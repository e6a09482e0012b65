"""How pulls fail: stalled registries, broken registries.d files, unknown images, lying manifests.

Every failure must say what went wrong and where, answer the gRPC status a client expects, leave no
partial download behind, and let a later pull succeed once the cause is gone.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.errors import FailedPrecondition, Unavailable
from crishim.image import ImageManager
from tests.harness import CrishimServer, poll, remove_root, run
from tests.image.proxy import registry_proxy, registry_proxy_thread
from tests.image.test_pull import poll_async, stored
from tests.image_fixtures import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    LayerBlob,
    Registry,
    TestImages,
    digest_of,
    free_port,
)

pytestmark = pytest.mark.root


def spec(ref: str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=ref)


async def pull_status(stub: Any, ref: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PullImage(api_pb2.PullImageRequest(image=spec(ref)))
    return err.value.code(), str(err.value.details())


def assert_nothing_left(manager: ImageManager) -> None:
    assert manager.list() == [] and stored(manager) == ([], [])
    assert list(manager.store.ingest.iterdir()) == []


# --- A: progress timeout ----------------------------------------------------------------------------


async def test_pauses_shorter_than_the_progress_timeout_do_not_fail(manager: ImageManager,
                                                                    test_images: TestImages) -> None:
    """Four 0.6 s pauses inside one layer: 2.4 s in all, more than the 2 s deadline, yet it finishes."""
    manager.pull_progress_timeout = 2.0
    async with registry_proxy(test_images.registry.url) as proxy:
        proxy.stall_min_bytes = 100_000
        proxy.stall_pauses, proxy.stall_seconds = 4, 0.6
        started = time.monotonic()
        record = await manager.pull(f"{proxy.host}/withuser:1")
        assert time.monotonic() - started > 2.4
        assert proxy.stalled.is_set() and record.id == test_images.with_user.id


async def test_stall_fails_naming_registry_blob_and_bytes(manager: ImageManager, stub: Any,
                                                         test_images: TestImages) -> None:
    manager.pull_progress_timeout = 1.0
    layer = test_images.base_layer
    async with registry_proxy(test_images.registry.url) as proxy:
        proxy.stall_min_bytes = 100_000  # the busybox layer, not the config; pauses until the proxy stops
        ref = f"{proxy.host}/withuser:1"
        started = time.monotonic()
        code, message = await pull_status(stub, ref)
        assert time.monotonic() - started >= 1.0
        assert code == grpc.StatusCode.UNAVAILABLE, message
        sent = -(-len(layer.data) // 2)
        assert f"no progress for 1 s: http://{proxy.host} stopped sending blob {layer.digest}" in message
        assert f"after {sent} of {len(layer.data)} bytes" in message and ref in message
        assert_nothing_left(manager)
        proxy.stall_min_bytes = 0
        assert (await manager.pull(ref)).id == test_images.with_user.id




def threads_running(function: str) -> list[str]:
    """The names of the threads with `function` on their stack."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return [names.get(ident, "?") for ident, frame in sys._current_frames().items()
            if any(f.f_code.co_name == function for f, _ in traceback.walk_stack(frame))]


async def test_a_stalled_layer_waits_on_a_thread_outside_the_shared_pool(manager: ImageManager,
                                                                          test_images: TestImages) -> None:
    """A layer is unpacked as it arrives, on a thread that waits on the registry. On a thread of the loop's
    pool (min(32, cpus + 4) threads) a few stalled registries held all of them and every call that needs
    one, and more layers in flight than the pool has threads deadlocked every pull (their data is handed
    over on that pool: a 3-layer pull never ended with a 2-thread pool)."""
    async with registry_proxy(test_images.registry.url) as proxy:
        proxy.stall_min_bytes = 100_000  # the busybox layer; pauses until the proxy stops
        pull = asyncio.create_task(manager.pull(f"{proxy.host}/withuser:1"))
        await asyncio.wait_for(proxy.stalled.wait(), 10)
        await poll_async(lambda: threads_running("unpack_fed"), what="the layer's unpacking to start")
        unpacking = threads_running("unpack_fed")
        assert not any(name.startswith("asyncio_") for name in unpacking), unpacking
        pull.cancel()
        await asyncio.gather(pull, return_exceptions=True)
    assert_nothing_left(manager)


def test_progress_timeout_from_the_config_file(tmp_path: Path, test_images: TestImages) -> None:
    """`images.pull_progress_timeout` reaches the pulls of a real `crishim serve` process."""
    with registry_proxy_thread(test_images.registry.url) as proxy:
        proxy.stall_min_bytes = 100_000
        server = CrishimServer(root=tmp_path / "crishim", node=None,
                               extra_config={"images.pull_progress_timeout": 1.5})
        try:
            server.start()
            ref = f"{proxy.host}/withuser:1"
            with pytest.raises(grpc.RpcError) as err:
                server.images().PullImage(api_pb2.PullImageRequest(image=spec(ref)), timeout=60)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"pulling {ref}: no progress for 1.5 s: http://{proxy.host} stopped sending blob " \
                   f"{test_images.base_layer.digest}" in str(err.value.details())
        finally:
            server.stop()
            remove_root(server.root)


async def test_silent_registry_fails_after_the_progress_timeout(manager: ImageManager,
                                                                test_images: TestImages) -> None:
    """A registry that accepts the connection and never answers: the wait for headers is bounded too."""
    manager.pull_progress_timeout = 0.5

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(Unavailable, match=rf"no answer from http://127\.0\.0\.1:{port} for "
                                              r"manifest busybox:1 in 0\.5 s"):
            await manager.pull(f"127.0.0.1:{port}/busybox:1")
    finally:
        server.close()


# --- B: broken registries.d files -------------------------------------------------------------------


def write_host_file(registries_dir: Path, name: str, content: str | bytes | None) -> Path:
    path = registries_dir / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(("content", "problem"), [
    ("mirrors = [\n", "not valid TOML: "),
    (b"mirrors = ['\xff']\n", "not UTF-8 text"),
    (None, "cannot be read: Is a directory"),
    ('mirrors = "http://x"\n', "mirrors must be a list, not str 'http://x'"),
    ("plain_http = 1\n", "plain_http must be a bool, not int 1"),
    ("skip_verify = \"no\"\n", "skip_verify must be a bool, not str 'no'"),
    ("ca_file = [\"a\"]\n", "ca_file must be a str, not list"),
    ("mirrors = [1]\n", "mirrors[0] 1 must be an http:// or https:// URL"),
    ('mirrors = ["http://ok", "ftp://x"]\n', "mirrors[1] 'ftp://x' must be an http:// or https:// URL"),
    ('mirror = ["http://x"]\n', "unknown key 'mirror' (known: ca_file, mirrors, plain_http, skip_verify)"),
])
async def test_broken_host_file_names_file_and_problem(manager: ImageManager, registries_dir: Path,
                                                       content: str | bytes | None, problem: str) -> None:
    path = write_host_file(registries_dir, "example.test.toml", content)
    with pytest.raises(FailedPrecondition) as err:
        await manager.pull("example.test/app:1")
    assert str(err.value).startswith(f"registry config {path}: {problem}"), str(err.value)


@pytest.mark.parametrize(("ca", "problem"), [
    (None, "does not exist"),
    (b"", "holds no usable PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"),
    (b"not a certificate\n", "holds no usable PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"),
    (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
     "holds no usable PEM certificate"),
    ("dir", "cannot be read: Is a directory"),
])
async def test_bad_ca_file_names_host_file_and_ca_file(manager: ImageManager, registries_dir: Path,
                                                       ca: bytes | str | None, problem: str) -> None:
    ca_path = registries_dir / "certs" / "ca.pem"
    if ca == "dir":
        ca_path.mkdir(parents=True)
    elif isinstance(ca, bytes):
        ca_path.parent.mkdir()
        ca_path.write_bytes(ca)
    path = write_host_file(registries_dir, "example.test.toml", 'ca_file = "certs/ca.pem"\n')
    with pytest.raises(FailedPrecondition) as err:
        await manager.pull("example.test/app:1")
    assert str(err.value).startswith(f"registry config {path}: ca_file {ca_path} {problem}"), \
        str(err.value)


async def test_broken_host_file_is_failed_precondition_over_grpc(stub: Any, registries_dir: Path) -> None:
    path = write_host_file(registries_dir, "example.test.toml", 'ca_file = "/nonexistent/ca.pem"\n')
    code, message = await pull_status(stub, "example.test/app:1")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert message == f"registry config {path}: ca_file /nonexistent/ca.pem does not exist"


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory,
                 test_images: TestImages) -> Iterator[tuple[str, Path]]:
    """The session registry's storage served over TLS, with a self-signed certificate for 127.0.0.1."""
    work = tmp_path_factory.mktemp("tls-registry")
    cert, key = work / "cert.pem", work / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=crishim-test", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)])
    host = f"127.0.0.1:{free_port()}"
    config = {"version": 0.1, "log": {"level": "warn"},
              "storage": {"filesystem": {"rootdirectory": str(test_images.registry.root / "data")}},
              "http": {"addr": host, "tls": {"certificate": str(cert), "key": str(key)}}}
    (work / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    with open(work / "registry.log", "ab") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(work / "config.yml")], stdout=log,
                                stderr=log)

    def ready() -> bool:
        try:
            trust = ssl.create_default_context(cafile=cert)
            return httpx.get(f"https://{host}/v2/", verify=trust).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        poll(ready, timeout=20, what="the TLS registry")
        yield host, cert
    finally:
        proc.terminate()
        proc.wait(10)


async def test_tls_trust_from_relative_ca_file_or_skip_verify(
        manager: ImageManager, registries_dir: Path, tls_registry: tuple[str, Path],
        test_images: TestImages) -> None:
    host, cert = tls_registry
    ref = f"{host}/withuser:1"
    (registries_dir / f"{host}.toml").write_text("plain_http = false\n")
    with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await manager.pull(ref)
    (registries_dir / "certs").mkdir()
    shutil.copy(cert, registries_dir / "certs" / "registry-ca.pem")
    (registries_dir / f"{host}.toml").write_text('plain_http = false\nca_file = "certs/registry-ca.pem"\n')
    assert (await manager.pull(ref)).id == test_images.with_user.id
    await manager.remove(ref)
    (registries_dir / f"{host}.toml").write_text("plain_http = false\nskip_verify = true\n")
    assert (await manager.pull(ref)).id == test_images.with_user.id


# --- C: unknown images ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["busybox:no-such-tag", "no-such-repo:1.0", f"busybox@sha256:{'0' * 64}",
                                  f"no-such/repo@sha256:{'1' * 64}"])
async def test_unknown_image_is_not_found(stub: Any, test_images: TestImages, name: str) -> None:
    """Unknown tag, repository or digest: docker-registry answers 404 MANIFEST_UNKNOWN to each."""
    ref = f"{test_images.registry.host}/{name}"
    code, message = await pull_status(stub, ref)
    assert code == grpc.StatusCode.NOT_FOUND, message
    assert message == f"image {ref} not found: manifest {name} not found at " \
                      f"{test_images.registry.url} (MANIFEST_UNKNOWN: manifest unknown)"


async def test_registry_itself_decides_between_not_found_and_unavailable(
        stub: Any, registries_dir: Path, test_images: TestImages) -> None:
    """Mirrors are asked first; the registry's own answer (or its silence) decides the status."""
    registry = test_images.registry
    (registries_dir / f"{registry.host}.toml").write_text('mirrors = ["http://127.0.0.1:1"]\n')
    ref = f"{registry.host}/busybox:no-such-tag"
    code, message = await pull_status(stub, ref)
    assert code == grpc.StatusCode.NOT_FOUND, message
    assert "cannot reach http://127.0.0.1:1" in message and "MANIFEST_UNKNOWN" in message

    (registries_dir / "127.0.0.1:1.toml").write_text(f'mirrors = ["{registry.url}"]\n')
    ref = "127.0.0.1:1/busybox:no-such-tag"
    code, message = await pull_status(stub, ref)
    assert code == grpc.StatusCode.UNAVAILABLE, message
    assert message.startswith(f"pulling {ref}: ") and "MANIFEST_UNKNOWN" in message
    assert "cannot reach http://127.0.0.1:1" in message


# --- D: declared sizes ------------------------------------------------------------------------------


def push_with_layer_size(registry: Registry, layer: LayerBlob, size: int) -> str:
    """An image whose manifest declares `size` bytes for `layer`; its config is unique to the call."""
    repo = f"sizes-{time.monotonic_ns()}"
    spec_bytes = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                             "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
                             "comment": repo}).encode()
    registry.push_blob(repo, layer.data)
    registry.push_blob(repo, spec_bytes)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": digest_of(spec_bytes), "size": len(spec_bytes)},
                "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": size}]}
    registry.push_manifest(repo, "1", json.dumps(manifest).encode(), OCI_MANIFEST)
    return f"{repo}:1"


@pytest.mark.parametrize("delta", [1, -1])
async def test_stored_blob_must_have_the_declared_size(manager: ImageManager, test_images: TestImages,
                                                       delta: int) -> None:
    kept = await manager.pull(test_images.with_user.ref)
    before = stored(manager)
    layer = test_images.base_layer
    declared = len(layer.data) + delta
    name = push_with_layer_size(test_images.registry, layer, declared)
    with pytest.raises(Unavailable) as err:
        await manager.pull(f"{test_images.registry.host}/{name}")
    assert f"declares {declared} bytes for blob {layer.digest}, the stored blob of that digest has " \
           f"{len(layer.data)}" in str(err.value)
    assert manager.list() == [kept] and stored(manager) == before
    assert list(manager.store.ingest.iterdir()) == []


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("delta", [1, -1])
async def test_download_must_have_the_declared_size(manager: ImageManager, test_images: TestImages,
                                                    delta: int, chunked: bool) -> None:
    """More or fewer bytes than declared, announced in Content-Length or only seen while reading."""
    layer = test_images.base_layer
    declared, actual = len(layer.data) + delta, len(layer.data)
    name = push_with_layer_size(test_images.registry, layer, declared)
    async with registry_proxy(test_images.registry.url) as proxy:
        proxy.chunked = chunked
        with pytest.raises(Unavailable) as err:
            await manager.pull(f"{proxy.host}/{name}")
    what = f"blob {layer.digest} of {name.split(':')[0]}"
    if not chunked:
        expected = f"announces {actual} bytes for {what}, the manifest declares {declared}"
    elif delta > 0:
        expected = f"sent {actual} of the {declared} bytes the manifest declares for {what}"
    else:
        expected = f"sent more than the {declared} bytes the manifest declares for {what}"
    assert expected in str(err.value)
    assert_nothing_left(manager)


# --- C: pulls given up by their callers ---------------------------------------------------------------


async def test_a_pull_given_up_mid_download_stops_it_and_a_retry_starts_afresh(
        manager: ImageManager, test_images: TestImages) -> None:
    """A client whose deadline passes (critest's "public image should timeout if requested", kubelet
    going away) cancels its pull: the download it alone waited for stops, leaving nothing, and a retry
    fetches anew rather than joining a download stalled on a dead connection."""
    async with registry_proxy(test_images.registry.url) as proxy:
        proxy.stall_min_bytes = 100_000  # the busybox layer stalls half way until the proxy stops
        ref = f"{proxy.host}/withuser:1"
        pull = asyncio.ensure_future(manager.pull(ref))
        await asyncio.wait_for(proxy.stalled.wait(), 10)
        pull.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pull
        assert_nothing_left(manager)
        proxy.stall_min_bytes = 0
        record = await asyncio.wait_for(manager.pull(ref), 10)
        assert record.id == test_images.with_user.id


async def test_a_download_shared_by_two_pulls_outlives_one_of_them(manager: ImageManager,
                                                                 test_images: TestImages) -> None:
    """The download goes on as long as one pull still waits for it, and is fetched only once."""
    async with registry_proxy(test_images.registry.url) as proxy:
        proxy.stall_min_bytes, proxy.stall_seconds = 100_000, 0.5
        ref = f"{proxy.host}/withuser:1"
        first = asyncio.ensure_future(manager.pull(ref))
        await asyncio.wait_for(proxy.stalled.wait(), 10)
        second = asyncio.ensure_future(manager.pull(ref))
        await poll_async(lambda: 2 in manager._waiters.values(), what="the second pull to join")
        first.cancel()
        assert (await asyncio.wait_for(second, 10)).id == test_images.with_user.id
        assert proxy.requests[f"/v2/withuser/blobs/{test_images.base_layer.digest}"] == 1
