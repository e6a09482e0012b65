"""How pulls fail: stalled registries, broken registries.d files, unknown images, lying manifests.

Every failure must say what went wrong and where, answer the gRPC status a client expects, leave no
partial download behind, and let a later pull succeed once the cause is gone.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.errors import FailedPrecondition, Unavailable
from crishim.image import ImageManager
from tests.harness import poll, run
from tests.image.test_pull import stored
from tests.image_fixtures import (
    TestImages,
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


async def test_ca_file_relative_to_the_host_file_is_trusted(manager: ImageManager, registries_dir: Path,
                                                            tls_registry: tuple[str, Path],
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
