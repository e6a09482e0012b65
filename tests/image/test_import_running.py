"""`crishim images import` into a running crishim, through its admin socket (a real server in a test node)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from crishim.admin import admin_socket_path
from crishim.admin.protocol import FRAME_HEADER, line
from crishim.api.runtime.v1 import api_pb2
from crishim.image.store import Store
from crishim.server.app import AlreadyServing, claim_socket
from tests.harness import REPO, CrishimServer, poll, run
from tests.image.test_import import docker_save
from tests.image.test_import import store_leftovers as leftovers_of
from tests.image.test_permissions import NOBODY, open_server
from tests.image_fixtures import TestImages, entry, make_tar
from tests.sandbox.podutil import pod_config, run_pod
from tests.test_e2e import container_config, exec_sync, start_container

pytestmark = pytest.mark.root
__all__ = ["open_server"]  # the fixture, used by name



def import_command(server: CrishimServer, archive: str) -> list[str]:
    return [sys.executable, "-m", "crishim", "--config", str(server.config_path), "images", "import", archive]


def crishim_import(server: CrishimServer, archive: str, timeout: float | None = None
                   ) -> subprocess.CompletedProcess[str]:
    return run(import_command(server, archive), cwd=REPO, timeout=timeout)


def crishim_import_stdin(server: CrishimServer, data: bytes, check: bool = True
                         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(import_command(server, "-"), input=data, capture_output=True, cwd=REPO,
                          check=check)


def docker_archive(tmp_path: Path, source: str, name: str) -> Path:
    """`docker save` of `source` (a skopeo source) as `name`."""
    path = tmp_path / f"{name.replace('/', '_').replace(':', '_')}.tar"
    run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", source, f"docker-archive:{path}:{name}"])
    return path


def image_status(server: CrishimServer, ref: str) -> api_pb2.Image:
    return server.images().ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))).image


def store_leftovers(server: CrishimServer) -> list[str]:
    return leftovers_of(Store(server.state_dir / "images"))


def test_import_into_running_server_then_run(server: CrishimServer, test_images: TestImages,
                                             tmp_path: Path) -> None:
    archive = docker_archive(tmp_path, f"oci:{test_images.layout}:1", "example.test/loaded:1")
    result = crishim_import(server, str(archive))
    assert result.stdout.split() == [test_images.busybox.id, "example.test/loaded:1"]
    image = image_status(server, "example.test/loaded:1")
    assert image.id == test_images.busybox.id and list(image.repo_tags) == ["example.test/loaded:1"]
    again = crishim_import(server, str(archive))  # idempotent: the same image, no second copy
    assert again.stdout == result.stdout
    listed = server.images().ListImages(api_pb2.ListImagesRequest()).images
    assert [i.id for i in listed] == [test_images.busybox.id]

    pod = pod_config("imported")
    pod_id = run_pod(server, pod)
    cid = start_container(server, pod_id, pod,
                          container_config("imported", "example.test/loaded:1", "sleep", "1000"))
    out = exec_sync(server, cid, "cat", "/etc/group")
    assert out.exit_code == 0 and out.stdout == b"root:x:0:\nuser:x:1000:\n"
    assert list(server.state_dir.joinpath("images/ingest").iterdir()) == []


def test_progress_of_a_multilayer_archive(server: CrishimServer, node_registry: str,
                                          test_images: TestImages, tmp_path: Path) -> None:
    archive = docker_archive(tmp_path, f"docker://{test_images.multilayer.ref}", "example.test/multi:3")
    result = crishim_import(server, str(archive))
    assert result.stdout.split() == [test_images.multilayer.id, "example.test/multi:3"]
    progress = result.stderr.splitlines()
    layers = [text.split()[1] for text in progress if text.startswith("layer ")]
    assert layers == ["1/3", "2/3", "3/3"], progress
    assert progress[0].startswith("read ") and progress[0].endswith("MiB (all)")
    assert image_status(server, "example.test/multi:3").id == test_images.multilayer.id


def test_stdin_gzip_import_while_pulling(server: CrishimServer, node_registry: str,
                                         test_images: TestImages, tmp_path: Path) -> None:
    """`docker save img | gzip | crishim images import -` while a pull of an image sharing its base layer
    runs: both land, the shared layer unpacked once."""
    archive = docker_archive(tmp_path, f"oci:{test_images.layout}:1", "piped:dev")  # as kind users name it
    pulled: list[api_pb2.PullImageResponse] = []
    puller = threading.Thread(target=lambda: pulled.append(server.images().PullImage(
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=test_images.multilayer.ref)), timeout=120)))
    puller.start()
    result = crishim_import_stdin(server, gzip.compress(archive.read_bytes()))
    puller.join()
    assert result.stdout.decode().split() == [test_images.busybox.id, "docker.io/library/piped:dev"]
    assert pulled[0].image_ref == test_images.multilayer.id
    for name in ("piped:dev", "docker.io/library/piped:dev"):  # what a pod spec says, what kubelet asks
        assert image_status(server, name).id == test_images.busybox.id
    assert image_status(server, test_images.multilayer.ref).id == test_images.multilayer.id


# Connects as whoever runs it: "refused" if connecting is, else the daemon's first line (it speaks first
# only to refuse).
CONNECT = """
import os, socket, sys
os.stat(sys.argv[1])  # the path is reachable: a refusal below is the socket's own
sock = socket.socket(socket.AF_UNIX)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    print("refused")
else:
    print(sock.makefile().readline(), end="")
"""


def test_admin_socket_is_root_only(open_server: CrishimServer) -> None:
    server = open_server.start()
    path = admin_socket_path(server.root / "run")
    mode = path.lstat()
    assert stat.S_ISSOCK(mode.st_mode) and stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == 0
    as_nobody = [*NOBODY, sys.executable, "-I", "-c", CONNECT, str(path)]
    refused = run(as_nobody, check=False)
    assert refused.stdout == "refused\n", refused.stderr
    # Even with the socket opened up, the daemon checks who is calling.
    os.chmod(path, 0o666)
    try:
        answer = run(as_nobody, check=False)
    finally:
        os.chmod(path, 0o600)
    assert json.loads(answer.stdout) == {"error": "permission denied: uid 65534 is not root",
                                  "code": "PermissionDenied"}, answer.stderr
    assert server.images().ListImages(api_pb2.ListImagesRequest()).images == []


def test_bad_requests_are_answered(server: CrishimServer) -> None:
    path = admin_socket_path(server.root / "run")
    for request, words in ((b"nonsense\n", "not JSON"), (line({"call": "export"}), "unknown admin call"),
                           (line({"call": "import"}) + FRAME_HEADER.pack(1 << 30), "frame of")):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(request)
            answer = json.loads(sock.makefile().readline())
        assert words in answer["error"] and answer["code"] == "InvalidArgument", answer
    garbage = crishim_import_stdin(server, b"not a tar" * 1000, check=False)
    assert garbage.returncode == 1 and b"not a usable image archive" in garbage.stderr
    assert store_leftovers(server) == []


def test_stalled_import_fails_after_the_progress_timeout(server_factory: Callable[..., CrishimServer],
                                                        test_images: TestImages, tmp_path: Path) -> None:
    """A client that stops sending (but stays connected) does not pin the import's content forever."""
    server = server_factory(**{"images.pull_progress_timeout": 1.0})
    data = docker_archive(tmp_path, f"oci:{test_images.layout}:1", "example.test/stalled:1").read_bytes()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(admin_socket_path(server.root / "run")))
        sock.sendall(line({"call": "import"}) + FRAME_HEADER.pack(1 << 19) + data[:1 << 19])
        answers = [json.loads(text) for text in sock.makefile()]
    assert answers[-1] == {"error": "no archive data for 1s", "code": "ImportCancelled"}
    assert store_leftovers(server) == []


def half_import(server: CrishimServer, archive: Path) -> subprocess.Popen[bytes]:
    """`crishim images import -` given half of `archive`, once the daemon is unpacking that half."""
    data = archive.read_bytes()
    client = subprocess.Popen(import_command(server, "-"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=REPO)
    assert client.stdin is not None
    client.stdin.write(data[:len(data) // 2])
    client.stdin.flush()
    ingest = server.state_dir / "images/ingest"

    def receiving() -> bool:
        return any(any(scratch.rglob("*")) for scratch in ingest.glob("import-*"))

    poll(receiving, timeout=20, what="the daemon unpacking the first half of the archive")
    return client


def test_client_killed_mid_import_leaves_nothing(server: CrishimServer, test_images: TestImages,
                                                 tmp_path: Path) -> None:
    client = half_import(server, docker_archive(tmp_path, f"oci:{test_images.layout}:1", "example.test/k:1"))
    client.send_signal(signal.SIGKILL)
    client.communicate()
    poll(lambda: store_leftovers(server) == [], timeout=20, what="the cancelled import's files to go")
    assert server.images().ListImages(api_pb2.ListImagesRequest()).images == []
    assert "image import cancelled" in server.log()


def test_client_killed_while_layers_unpack_leaves_nothing(server: CrishimServer, tmp_path: Path) -> None:
    """The whole archive sent, the client dies once the first of 40 layers is in: the daemon notices
    (the connection ends) and stops at the next layer, dropping what it stored."""
    layers = [make_tar([(entry(f"data{i}"), os.urandom(2 << 20))]) for i in range(40)]
    archive = docker_save(tmp_path / "many.tar", "example.test/many:1", layers)
    client = subprocess.Popen(import_command(server, str(archive)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert client.stderr is not None
    for progress in client.stderr:
        if progress.startswith("layer 1/40"):
            break
    client.send_signal(signal.SIGKILL)
    client.communicate()
    poll(lambda: "image import cancelled" in server.log(), timeout=30, what="the import to be cancelled")
    poll(lambda: store_leftovers(server) == [], timeout=20, what="the cancelled import's files to go")
    assert server.images().ListImages(api_pb2.ListImagesRequest()).images == []


def test_stopping_crishim_cancels_an_import(server: CrishimServer, test_images: TestImages,
                                            tmp_path: Path) -> None:
    client = half_import(server, docker_archive(tmp_path, f"oci:{test_images.layout}:1", "example.test/s:1"))
    assert server.stop() == 0
    _, stderr = client.communicate(timeout=20)
    assert client.returncode == 1 and b"crishim is stopping: the import was cancelled" in stderr
    assert store_leftovers(server) == []
    assert not admin_socket_path(server.root / "run").exists()


def test_concurrent_imports_of_one_image(server: CrishimServer, test_images: TestImages,
                                         tmp_path: Path) -> None:
    """Two clients load the same archive while a third loads the layout directory it came from."""
    archive = docker_archive(tmp_path, f"oci:{test_images.layout}:1", "example.test/twice:1")
    clients = [subprocess.Popen(import_command(server, source), stdout=subprocess.PIPE, text=True, cwd=REPO)
               for source in (str(archive), str(archive), str(test_images.layout))]
    outputs = [client.communicate(timeout=60)[0].split() for client in clients]
    assert [client.returncode for client in clients] == [0, 0, 0]
    assert outputs[:2] == [[test_images.busybox.id, "example.test/twice:1"]] * 2
    assert outputs[2][0] == test_images.busybox.id  # the layout names no repository; the image has a name
    (image,) = server.images().ListImages(api_pb2.ListImagesRequest()).images
    assert image.id == test_images.busybox.id and list(image.repo_tags) == ["example.test/twice:1"]
    assert store_leftovers(server) == []  # nothing but the image's own blobs and layer


def test_admin_socket_ownership(server: CrishimServer, test_images: TestImages, tmp_path: Path) -> None:
    """Claimed like the CRI socket: refused while a crishim serves it, taken over once that one is dead."""
    path = admin_socket_path(server.root / "run")
    with pytest.raises(AlreadyServing, match="another crishim"):
        claim_socket(path)
    server.kill9()
    assert path.exists()  # a SIGKILLed crishim leaves its socket behind
    server.start()
    archive = docker_archive(tmp_path, f"oci:{test_images.layout}:1", "example.test/after:1")
    assert crishim_import(server, str(archive)).stdout.split() == [test_images.busybox.id,
                                                                    "example.test/after:1"]
    server.stop()
    assert not path.exists()
    offline = crishim_import(server, str(archive))  # no crishim: straight into the store
    assert offline.stdout.split() == [test_images.busybox.id, "example.test/after:1"]
