"""ImageManager against a real registry: pulls, names, removal, faults and crash recovery."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from crishim.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from crishim.image import ImageManager, RegistryAuth
from crishim.image.registry import HttpPool, RegistryClient
from crishim.image.registry_config import Endpoint
from tests.harness import REPO, run
from tests.image.proxy import registry_proxy
from tests.image_fixtures import LayerBlob, Registry, TestImages, entry, free_port, make_tar

pytestmark = pytest.mark.root


def stored(manager: ImageManager) -> tuple[list[str], list[str]]:
    blobs = sorted(p.name for p in manager.store.blobs.iterdir())
    layers = sorted(p.name for p in manager.store.layers.iterdir() if p.name != "empty")
    return blobs, layers


def mirror(registries_dir: Path, host: str, *urls: str) -> None:
    (registries_dir / f"{host}.toml").write_text(f"mirrors = {json.dumps(list(urls))}\n")


async def poll_async(check: Callable[[], object], limit: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_pull_by_tag_gives_config_digest_and_names(manager: ImageManager,
                                                         test_images: TestImages) -> None:
    busybox = test_images.busybox
    record = await manager.pull(busybox.ref)
    assert record.id == busybox.id
    assert record.repo_tags == [busybox.ref]
    name = busybox.ref.rsplit(":", 1)[0]
    assert record.repo_digests == [f"{name}@{busybox.manifest_digest}"]
    assert record.config["Cmd"] == ["sh"] and record.spec["architecture"] == "amd64"
    for key in (busybox.id, busybox.id[7:], busybox.id[7:19], busybox.ref,
                f"{name}@{busybox.manifest_digest}"):
        assert manager.get(key) is record, key
    assert manager.list() == [record] and manager.list(busybox.ref) == [record]
    assert manager.get(f"{name}:2") is None and manager.list("nope") == []
    usage = manager.fs_usage()
    assert usage.used_bytes > record.size and usage.inodes_used > 10


async def test_docker_schema2_pull_shares_layers(manager: ImageManager,
                                                 test_images: TestImages) -> None:
    first = await manager.pull(test_images.busybox.ref)
    blobs_before, layers_before = stored(manager)
    second = await manager.pull(test_images.busybox_docker)
    assert second.id == first.id
    assert sorted(second.repo_tags) == sorted([test_images.busybox.ref, test_images.busybox_docker])
    assert len(second.repo_digests) == 2
    blobs_after, layers_after = stored(manager)
    assert layers_after == layers_before and len(blobs_after) == len(blobs_before) + 1


async def test_mirror_keeps_original_name(manager: ImageManager, test_images: TestImages,
                                          registries_dir: Path) -> None:
    url = test_images.registry.url
    mirror(registries_dir, "registry.k8s.io", "http://127.0.0.1:1", url)
    mirror(registries_dir, "docker.io", url)
    by_tag = await manager.pull("registry.k8s.io/busybox:1")
    assert by_tag.id == test_images.busybox.id
    assert by_tag.repo_tags == ["registry.k8s.io/busybox:1"]
    digest_ref = f"registry.k8s.io/busybox@{test_images.busybox.manifest_digest}"
    assert (await manager.pull(digest_ref)).id == by_tag.id
    short = await manager.pull("busybox")
    assert short.id == by_tag.id
    assert "docker.io/library/busybox:latest" in short.repo_tags
    assert manager.get("busybox") is short and manager.get("busybox:latest") is short
    assert manager.get(digest_ref) is short


async def test_index_picks_host_platform(manager: ImageManager, test_images: TestImages) -> None:
    record = await manager.pull(test_images.multiarch)
    assert record.spec["architecture"] == "amd64" and "ARCH=amd64" in record.config["Env"]
    name = test_images.multiarch.rsplit(":", 1)[0]
    assert record.repo_digests == [f"{name}@{test_images.multiarch_digest}"]
    assert manager.get(f"{name}@{test_images.multiarch_digest}") is record


async def test_user_from_config(manager: ImageManager, test_images: TestImages) -> None:
    record = await manager.pull(test_images.with_user.ref)
    assert (record.uid, record.username) == (1000, "")
    busybox = await manager.pull(test_images.busybox.ref)
    assert (busybox.uid, busybox.username) == (None, "")


async def test_three_tags_one_image_removed_together(manager: ImageManager,
                                                     test_images: TestImages) -> None:
    records = [await manager.pull(ref) for ref in test_images.tagged]
    assert len({r.id for r in records}) == 1
    assert sorted(records[0].repo_tags) == sorted(test_images.tagged)
    assert len(manager.list()) == 1
    await manager.remove(test_images.tagged[1])
    assert manager.list() == [] and all(manager.get(t) is None for t in test_images.tagged)
    assert stored(manager) == ([], [])
    await manager.remove(test_images.tagged[1])  # unknown now: no error


async def test_remove_keeps_shared_content(manager: ImageManager, test_images: TestImages) -> None:
    busybox = await manager.pull(test_images.busybox.ref)
    await manager.pull(test_images.with_user.ref)
    await manager.remove(test_images.with_user.id)
    assert manager.list() == [busybox]
    blobs, layers = stored(manager)
    assert sorted(f"sha256:{b}" for b in blobs) == sorted(busybox.blobs)
    assert layers == [busybox.layers[0].diff_id[7:]]


async def test_tag_moves_to_the_new_image(manager: ImageManager, test_images: TestImages) -> None:
    registry, base = test_images.registry, test_images.base_layer
    repo = f"moving-{os.getpid()}-{time.monotonic_ns()}"
    registry.push_image(repo, ["1"], [base], {"Labels": {"version": "1"}})
    old = await manager.pull(f"{registry.host}/{repo}:1")
    registry.push_image(repo, ["1"], [base], {"Labels": {"version": "2"}})
    new = await manager.pull(f"{registry.host}/{repo}:1")
    assert new.id != old.id and new.repo_tags == [f"{registry.host}/{repo}:1"]
    assert old.repo_tags == [] and len(old.repo_digests) == 1
    assert manager.get(old.repo_digests[0]) is old
    assert sorted(r.id for r in manager.list()) == sorted([old.id, new.id])


async def test_concurrent_pulls_fetch_each_blob_once(manager: ImageManager,
                                                     test_images: TestImages) -> None:
    async with registry_proxy(test_images.registry.url) as proxy:
        ref = f"{proxy.host}/multilayer:1"
        records = await asyncio.gather(*(manager.pull(ref) for _ in range(5)))
        assert len({r.id for r in records}) == 1
        assert proxy.blob_requests() == 4  # config + three layers
        assert manager.get(ref) is records[0]


class FetchRefused:
    """A registry client for a pull that must fetch nothing."""

    endpoint = Endpoint(url="http://refused.invalid", verify=True, is_mirror=False)

    def blob(self, digest: str, size: int) -> None:
        raise AssertionError(f"{digest} was fetched again")


async def test_a_blob_stored_while_a_pull_looked_for_it_is_not_fetched_again(
        manager: ImageManager) -> None:
    """The race behind a rare extra fetch in the test above: a pull looks for a blob (in a thread) while
    another pull's store of it ends. The look finds nothing, and the store is no longer in flight to be
    joined: the pull must look again, not fetch."""
    data = b'{"architecture": "amd64"}'
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    key = f"blob:{digest}"
    manager._start_once(key, lambda: asyncio.to_thread(manager.store.put_blob, digest, data))
    real_look, looks = manager._stored_size, []

    def look_that_ran_before_the_store_ended(blob: str) -> int | None:
        looks.append(blob)
        if len(looks) > 1:
            return real_look(blob)
        deadline = time.monotonic() + 10
        while key in manager._inflight:  # the store ends, and its end is counted, during this look
            assert time.monotonic() < deadline, "the store did not end"
            time.sleep(0.001)
        return None

    manager._stored_size = look_that_ran_before_the_store_ended  # type: ignore[method-assign]
    await manager._ensure_blob(FetchRefused(), {"digest": digest, "size": len(data)})  # type: ignore[arg-type]
    assert looks == [digest, digest]


async def test_concurrent_removes(manager: ImageManager, test_images: TestImages) -> None:
    record = await manager.pull(test_images.tagged[0])
    await manager.pull(test_images.tagged[1])
    await asyncio.gather(*(manager.remove(name) for name in [*test_images.tagged[:2], record.id]))
    assert manager.list() == [] and stored(manager) == ([], [])


async def test_remove_races_a_pull_of_the_same_content(manager: ImageManager,
                                                       test_images: TestImages) -> None:
    await manager.pull(test_images.busybox.ref)
    for _ in range(3):
        pulled, _removed = await asyncio.gather(manager.pull(test_images.with_user.ref),
                                                manager.remove(test_images.busybox.ref))
        assert manager.get(pulled.id) is pulled
        blobs, layers = stored(manager)
        assert set(pulled.blobs) <= {f"sha256:{b}" for b in blobs}
        assert layers == [pulled.layers[0].diff_id[7:]]
        await manager.pull(test_images.busybox.ref)


async def test_in_use_image_is_not_removed(manager: ImageManager, test_images: TestImages) -> None:
    record = await manager.pull(test_images.busybox.ref)
    manager.set_in_use_checker(lambda image_id: image_id == record.id)
    with pytest.raises(FailedPrecondition, match="in use by a container"):
        await manager.remove(test_images.busybox.ref)
    assert manager.get(record.id) is record


async def test_unknown_image_names_the_reference(manager: ImageManager,
                                                 test_images: TestImages) -> None:
    ref = f"{test_images.registry.host}/no-such-image:1.0"
    with pytest.raises(NotFound, match=r"no-such-image:1\.0"):
        await manager.pull(ref)
    with pytest.raises(NotFound, match="busybox@sha256:0000"):
        await manager.pull(f"{test_images.registry.host}/busybox@sha256:{'0' * 64}")


async def test_unreachable_registry(manager: ImageManager) -> None:
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:1"):
        await manager.pull("127.0.0.1:1/busybox:1")


async def test_bad_references(manager: ImageManager) -> None:
    for ref in ("", "UPPER/Case:bad tag"):
        with pytest.raises(InvalidArgument):
            await manager.pull(ref)


async def test_tampered_blob_is_not_stored(manager: ImageManager, test_images: TestImages) -> None:
    async with registry_proxy(test_images.registry.url) as proxy:
        proxy.tamper = True
        with pytest.raises(Unavailable, match="digest"):
            await manager.pull(f"{proxy.host}/busybox:1")
    assert manager.list() == [] and stored(manager) == ([], [])
    assert list(manager.store.ingest.iterdir()) == []


async def test_failed_config_fetch_leaves_nothing(manager: ImageManager, test_images: TestImages) -> None:
    """The config is fetched into memory and stored beside the layers' download: when it cannot be
    fetched, no layer, blob, manifest or temp file stays, and a later pull works."""
    async with registry_proxy(test_images.registry.url) as proxy:
        proxy.broken_blob = test_images.busybox.id
        with pytest.raises(Unavailable, match="HTTP 500"):
            await manager.pull(f"{proxy.host}/busybox:1")
        assert manager.list() == [] and stored(manager) == ([], [])
        assert list(manager.store.ingest.iterdir()) == []
        proxy.broken_blob = ""
        record = await manager.pull(f"{proxy.host}/busybox:1")
    assert hashlib.sha256(manager.store.read_blob(record.id)).hexdigest() == record.id[7:]


async def test_layer_unpacks_while_the_config_is_still_on_its_way(manager: ImageManager,
                                                                   test_images: TestImages) -> None:
    """The config and the layers are fetched at once: a registry slow to serve the config does not hold
    the layer up, which is downloaded and unpacked meanwhile; the image exists once the config is in."""
    layer = manager.store.layer_path(test_images.base_layer.diff_id)
    async with registry_proxy(test_images.registry.url) as proxy:
        proxy.held_blob = test_images.busybox.id
        pull = asyncio.ensure_future(manager.pull(f"{proxy.host}/busybox:1"))
        try:
            await poll_async(layer.exists, what="the layer unpacked while the config is held")
            assert proxy.held.is_set() and not pull.done() and manager.list() == []
        finally:
            proxy.release_held()
            record = await asyncio.wait_for(pull, 30)
    assert record.id == test_images.busybox.id and manager.list() == [record]
    assert [x.diff_id for x in record.layers] == [test_images.base_layer.diff_id]
    assert layer.joinpath("bin/busybox").is_file()


async def test_config_naming_another_diff_id_leaves_no_layer(manager: ImageManager,
                                                             test_images: TestImages) -> None:
    """The layer is unpacked before the config says what it must be: when the config lists another
    diff_id, the pull fails naming both, and the layer it unpacked is not kept (nor any blob)."""
    real = test_images.base_layer
    wrong = LayerBlob(data=real.data, diff_id="sha256:" + "0" * 64)
    image = test_images.registry.push_image("wrong-diff-id", ["1"], [wrong])
    with pytest.raises(InvalidArgument, match=f"uncompressed content is {real.diff_id}, but the image "
                                              f"config says {wrong.diff_id}"):
        await manager.pull(image.ref)
    assert manager.list() == [] and stored(manager) == ([], [])
    assert list(manager.store.ingest.iterdir()) == []
    record = await manager.pull(test_images.busybox.ref)  # the same layer, rightly listed
    assert stored(manager)[1] == [real.diff_id[7:]] and manager.list() == [record]


async def test_tampered_layer_is_the_registrys_fault_not_the_layers(manager: ImageManager,
                                                                    test_images: TestImages) -> None:
    """The layer is unpacked as it arrives: bytes that are no valid gzip (the last byte flipped breaks its
    trailer) must still be reported as what they are, a registry serving the wrong content."""
    async with registry_proxy(test_images.registry.url) as proxy:
        proxy.tamper, proxy.tamper_min_bytes = True, 10_000  # the layer, not the config
        with pytest.raises(Unavailable, match=f"digest .* for blob {test_images.base_layer.digest}"):
            await manager.pull(f"{proxy.host}/busybox:1")
    assert manager.list() == [] and stored(manager) == ([], [])
    assert list(manager.store.ingest.iterdir()) == []


async def test_layer_escaping_its_dir_is_rejected(manager: ImageManager,
                                                  test_images: TestImages) -> None:
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        await manager.pull(test_images.evil.ref)
    assert manager.list() == [] and stored(manager) == ([], [])
    assert not (manager.store.layers / "escaped").exists()
    assert not (manager.store.root / "escaped").exists()


async def test_hostile_layer_refused_early_while_it_still_downloads(manager: ImageManager,
                                                                   test_images: TestImages) -> None:
    """The layer is unpacked as it arrives and its first entry is refused: the rest (far more than the
    feed between download and unpacking holds) must still be read and checked, not leave the download
    waiting on an unpacker that gave up."""
    evil = LayerBlob.from_tar(make_tar([entry("../escaped"), (entry("filler"), os.urandom(24 << 20))]))
    image = test_images.registry.push_image("evil-early", ["1"], [evil])
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        await asyncio.wait_for(manager.pull(image.ref), 60)
    assert manager.list() == [] and stored(manager) == ([], [])
    assert list(manager.store.ingest.iterdir()) == []


async def test_whiteout_of_dotdot_leaves_the_store_and_earlier_images(
        tmp_path: Path, manager: ImageManager, test_images: TestImages) -> None:
    """`.wh...` once named `<store>/layers/.tmp-X/..`, i.e. `layers/` itself, for deletion."""
    earlier = await manager.pull(test_images.busybox.ref)
    evil_layer = LayerBlob.from_tar(make_tar([entry(".wh...")]))
    evil = test_images.registry.push_image("evil-whiteout", ["1"], [test_images.base_layer, evil_layer])
    layers_before = stored(manager)[1]
    with pytest.raises(InvalidArgument) as caught:
        await manager.pull(evil.ref)
    assert evil_layer.digest in str(caught.value) and "'.wh...'" in str(caught.value)
    assert stored(manager)[1] == layers_before and manager.list() == [earlier]
    rootfs = await manager.prepare_rootfs(earlier.id, "c1", tmp_path / "c1")
    try:
        await rootfs.mount()
        assert run(["chroot", str(rootfs.merged), "/bin/cat", "/etc/hostname"]).stdout == "busybox\n"
    finally:
        await rootfs.unmount()
        await manager.release_rootfs("c1")


async def test_basic_auth_with_htpasswd(manager: ImageManager, auth_registry: Registry) -> None:
    ref = f"{auth_registry.host}/private/busybox:1"
    with pytest.raises(NotFound, match="requires authentication"):
        await manager.pull(ref)
    with pytest.raises(InvalidArgument, match="rejected the credentials"):
        await manager.pull(ref, RegistryAuth(username="alice", password="wrong"))
    record = await manager.pull(ref, RegistryAuth(username="alice", password="s3cret"))
    assert record.repo_tags == [ref]
    await manager.remove(ref)
    from tests.image_fixtures import basic_auth

    assert (await manager.pull(ref, RegistryAuth(auth=basic_auth("alice", "s3cret")))).id == record.id


async def test_index_survives_restart(tmp_path: Path, manager: ImageManager,
                                      test_images: TestImages) -> None:
    record = await manager.pull(test_images.multilayer.ref)
    await manager.close()
    again = ImageManager(root=manager.store.root)
    await again.start()
    try:
        loaded = again.get(test_images.multilayer.ref)
        assert loaded is not None and loaded.to_json() == record.to_json()
        assert loaded.spec == record.spec and again.fs_usage() == manager.fs_usage()
        with pytest.raises(FailedPrecondition, match="another process"):
            await ImageManager(root=manager.store.root).start()
    finally:
        await again.close()


PULL_SCRIPT = """
import asyncio, sys
from pathlib import Path
from crishim.image import ImageManager

async def main():
    images = ImageManager(root=Path(sys.argv[1]))
    await images.start()
    await images.pull(sys.argv[2])

asyncio.run(main())
"""


async def test_kill_9_mid_pull_then_pull_again(tmp_path: Path, test_images: TestImages) -> None:
    root = tmp_path / "killed"
    async with registry_proxy(test_images.registry.url) as proxy:
        proxy.stall_min_bytes = 100_000
        ref = f"{proxy.host}/multilayer:1"
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PULL_SCRIPT, str(root), ref,
                                                    cwd=REPO)
        try:
            await asyncio.wait_for(proxy.stalled.wait(), 20)
            await poll_async(lambda: any((root / "layers").glob(".tmp-*")), what="a layer being unpacked")
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        proxy.stall_min_bytes = 0
        images = ImageManager(root=root)
        await images.start()
        try:
            assert images.list() == [] and list(images.store.ingest.iterdir()) == []
            # Layers the killed pull unpacked (or named) belong to no image: none is left to be trusted.
            assert [p.name for p in images.store.layers.iterdir()] == ["empty"]
            record = await images.pull(ref)
            assert images.get(ref) is record and len(record.layers) == 3
            rootfs_layers = sorted(p.name for p in images.store.layers.iterdir())
            assert rootfs_layers == sorted(["empty", *(layer.diff_id[7:] for layer in record.layers)])
        finally:
            await images.close()


async def test_bearer_token_auth(manager: ImageManager, token_registry: Registry,
                                 test_images: TestImages) -> None:
    ref = f"{token_registry.host}/busybox:1"
    with pytest.raises(NotFound, match="requires authentication"):
        await manager.pull(ref)
    with pytest.raises(InvalidArgument, match="rejected the credentials"):
        await manager.pull(ref, RegistryAuth(username="alice", password="wrong"))
    record = await manager.pull(ref, RegistryAuth(username="alice", password="s3cret"))
    assert record.id == test_images.busybox.id and record.repo_tags == [ref]


def pooled_connections(manager: ImageManager) -> list[object]:
    """The connections the shared verifying client keeps open (httpcore's pool)."""
    client, owned = manager._http.client(Endpoint(url="http://unused", verify=True, is_mirror=False))
    assert not owned
    return list(client._transport._pool.connections)  # type: ignore[attr-defined]


async def test_pulls_reuse_the_registrys_connection(manager: ImageManager, test_images: TestImages) -> None:
    """A pull's HTTP client outlives it: the next pull from the registry goes over the same connections
    (one or two: the config and the layer are fetched at once)."""
    await manager.pull(test_images.busybox.ref)
    first = pooled_connections(manager)
    await manager.remove(test_images.busybox.ref)
    await manager.pull(test_images.busybox.ref)
    assert 1 <= len(first) <= 2 and {id(c) for c in pooled_connections(manager)} == {id(c) for c in first}
    await manager.close()
    assert pooled_connections(manager) == []  # a closed manager leaves no connection behind


async def test_http_pool_keeps_trust_settings_and_no_cookies() -> None:
    pool = HttpPool()
    verified, owned = pool.client(Endpoint(url="https://a.example", verify=True, is_mirror=True))
    unverified, _ = pool.client(Endpoint(url="https://a.example", verify=False, is_mirror=False))
    again, _ = pool.client(Endpoint(url="https://b.example", verify=True, is_mirror=False))
    assert not owned and again is verified and unverified is not verified
    own_ca, owned = pool.client(Endpoint(url="https://a.example", verify=ssl.create_default_context(),
                                         is_mirror=False))
    assert owned and own_ca not in (verified, unverified)  # closed by its pull, not kept
    await own_ca.aclose()
    request = httpx.Request("GET", "https://a.example/v2/")
    verified.cookies.extract_cookies(httpx.Response(200, headers={"Set-Cookie": "session=alice; Path=/"},
                                                    request=request))
    assert list(verified.cookies.jar) == []  # one pull's session never rides along with another's
    await pool.aclose()
    assert verified.is_closed and unverified.is_closed


FIRST_REQUEST = """
import asyncio, sys
import httpx
from crishim.image.registry import HttpPool
from crishim.image.registry_config import Endpoint

async def main() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\\r\\n\\r\\n")
        writer.write(b"HTTP/1.1 204 No Content\\r\\nConnection: close\\r\\n\\r\\n")
        await writer.drain()
        writer.close()

    pool = HttpPool()
    if sys.argv[1] == "warm":
        pool.warm_up()
        await pool.warmed()
    before = set(sys.modules)
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        client, _ = pool.client(Endpoint(url=url, verify=True, is_mirror=False))
        assert (await client.get(url)).status_code == 204
    await pool.aclose()
    print(" ".join(sorted(set(sys.modules) - before)))

asyncio.run(main())
"""


@pytest.mark.parametrize("warm", [True, False])
def test_warm_up_loads_what_the_first_request_would_on_the_event_loop(warm: bool) -> None:
    """ImageManager.start warms the pool up in a thread: the first pull must not import httpx's
    transport (httpcore, h11, anyio's sockets) or read the trust store on the event loop (some 50 ms).
    Without the warm-up they are imported, which shows the check can fail."""
    done = run([sys.executable, "-c", FIRST_REQUEST, "warm" if warm else "cold"], cwd=REPO)
    loaded = {name.split(".")[0] for name in done.stdout.split()}
    transport = {"httpcore", "h11", "anyio", "certifi", "sniffio"}
    if warm:
        assert not loaded & transport, done.stdout
    else:
        assert {"httpcore", "h11", "anyio"} <= loaded


async def test_pull_after_the_registry_restarted(tmp_path: Path, manager: ImageManager) -> None:
    """The connection the last pull left in the pool is dead once the registry restarted: the next pull
    still works (over a new one)."""
    (tmp_path / "registry").mkdir()
    registry = Registry(host=f"127.0.0.1:{free_port()}", root=tmp_path / "registry").start()
    try:
        tar = make_tar([(entry("data/file"), b"restarted")])
        image = registry.push_image("restart", ["1"], [LayerBlob.from_tar(tar)])
        await manager.pull(image.ref)
        await manager.remove(image.ref)
        registry.stop()
        registry = Registry(host=registry.host, root=registry.root).start()
        assert (await manager.pull(image.ref)).id == image.id
    finally:
        registry.stop()


async def test_kept_alive_connection_closed_as_the_get_goes_out() -> None:
    """A registry may close an idle connection just as the pool reuses it (a race no real registry
    produces on demand): the GET, which nothing answered, is sent again over a new connection."""
    body = b'{"schemaVersion": 2}'
    answered = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await reader.readuntil(b"\r\n\r\n")
        answered += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")  # the next request on the kept-alive connection: dropped
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pool = HttpPool()
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        client = RegistryClient(Endpoint(url=url, verify=True, is_mirror=False), "r", None, pool, 5.0)
        for _ in range(2):
            assert await client.manifest("1") == (body, "application/vnd.oci.image.manifest.v1+json")
        assert answered == 2
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()
