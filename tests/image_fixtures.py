"""A real registry (Debian's docker-registry) and test images built from busybox-static.

Session-scoped: the registry runs on 127.0.0.1 on a free port with its storage in a temp dir; the busybox
image is built with umoci and pushed with skopeo, the odd images (whiteouts, indexes, tampered layers)
are written by `Registry.push_image` straight through the distribution API. Other suites use
`busybox_image`, the pushed reference of a one-layer busybox image.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.harness import TestNode, poll, run

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "httpd", "sleep", "cat", "echo", "ip", "hostname", "id", "ping", "nc", "wget",
           "ls", "mkdir", "rm", "touch", "test", "true", "false", "env", "ps", "kill", "grep",
           "top", "seq", "sync")  # critest's default container command, and its metrics workload
PASSWD = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
GROUP = "root:x:0:\nuser:x:1000:\n"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass
class LayerBlob:
    """A layer as pushed: gzip bytes plus the digest of the tar inside (the config's diff_id)."""

    data: bytes
    diff_id: str

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    @classmethod
    def from_tar(cls, tar: bytes) -> LayerBlob:
        return cls(data=gzip.compress(tar, mtime=0), diff_id=digest_of(tar))


def make_tar(entries: Sequence[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A tar of the given members; pair a member with bytes to give a regular file content."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info, data = entry if isinstance(entry, tuple) else (entry, b"")
            if info.isreg():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = "",
          uid: int = 0, gid: int = 0, mtime: int = 1_700_000_000) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = linkname
    info.uid, info.gid, info.mtime = uid, gid, mtime
    return info


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    auth: tuple[str, str] | None = None
    _client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, extra: dict[str, Any] | None = None) -> Registry:
        config = {"version": 0.1, "log": {"level": "warn"},
                  "storage": {"filesystem": {"rootdirectory": str(self.root / "data")},
                              "delete": {"enabled": True}},
                  "http": {"addr": self.host}, **(extra or {})}
        path = self.root / "config.yml"
        path.write_text(json.dumps(config))  # YAML is a superset of JSON
        log = open(self.root / "registry.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(["docker-registry", "serve", str(path)], stdout=log,
                                     stderr=log)
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError((self.root / "registry.log").read_text())
            try:
                return self._client.get(f"{self.url}/v2/").status_code in (200, 401)
            except httpx.HTTPError:
                return False

        poll(ready, timeout=20, what=f"docker-registry on {self.host}")
        return self

    def stop(self) -> None:
        self._client.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def _auth(self) -> Any:
        return httpx.BasicAuth(*self.auth) if self.auth else httpx.USE_CLIENT_DEFAULT

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = digest_of(data)
        start = self._client.post(f"{self.url}/v2/{repo}/blobs/uploads/", auth=self._auth())
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        sep = "&" if "?" in location else "?"
        done = self._client.put(f"{location}{sep}digest={digest}", content=data, auth=self._auth(),
                                headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return digest

    def push_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        response = self._client.put(f"{self.url}/v2/{repo}/manifests/{ref}", content=body,
                                    headers={"Content-Type": media_type}, auth=self._auth())
        assert response.status_code == 201, response.text
        return digest_of(body)

    def push_image(self, repo: str, tags: list[str], layers: list[LayerBlob],
                   config: dict[str, Any] | None = None, arch: str = "amd64") -> Image:
        """Push layers, a config and an OCI manifest; returns what was pushed."""
        spec = {"architecture": arch, "os": "linux",
                "config": {"Env": [PATH_ENV], "Cmd": ["sh"], **(config or {})},
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}}
        spec_bytes = json.dumps(spec).encode()
        for layer in layers:
            self.push_blob(repo, layer.data)
        self.push_blob(repo, spec_bytes)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": digest_of(spec_bytes),
                               "size": len(spec_bytes)},
                    "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer.digest,
                                "size": len(layer.data)} for layer in layers]}
        body = json.dumps(manifest).encode()
        for tag in tags or [digest_of(body)]:
            self.push_manifest(repo, tag, body, OCI_MANIFEST)
        return Image(ref=f"{self.host}/{repo}:{tags[0]}" if tags else "", id=digest_of(spec_bytes),
                     manifest_digest=digest_of(body), manifest=body, spec=spec)


@dataclass
class Image:
    ref: str
    id: str
    manifest_digest: str
    manifest: bytes
    spec: dict[str, Any]


@dataclass
class TestImages:
    """Everything pushed to the session registry, by purpose."""

    __test__ = False  # a fixture value, not a test class

    registry: Registry
    layout: Path  # OCI layout holding busybox:1 (for imports)
    busybox: Image
    busybox_docker: str  # the same image pushed as a Docker schema 2 manifest
    base_layer: LayerBlob
    multilayer: Image
    with_user: Image
    multiarch: str
    multiarch_digest: str
    tagged: list[str]
    evil: Image


def build_busybox_layout(work: Path) -> Path:
    """umoci: a one-layer image with busybox, its applets as hard links, passwd and group."""
    layout = work / "layout"
    bundle = work / "bundle"
    run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", f"{layout}:base"])
    run(["umoci", "unpack", "--image", f"{layout}:base", str(bundle)])
    rootfs = bundle / "rootfs"
    for name in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/user", "usr/bin"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.chown(rootfs / "home/user", 1000, 1000)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).hardlink_to(rootfs / "bin/busybox")
    (rootfs / "etc/passwd").write_text(PASSWD)
    (rootfs / "etc/group").write_text(GROUP)
    (rootfs / "etc/hostname").write_text("busybox\n")
    run(["umoci", "repack", "--image", f"{layout}:base", str(bundle)])
    run(["umoci", "config", "--image", f"{layout}:base", "--tag", "1", "--config.cmd", "sh",
         "--config.env", PATH_ENV, "--os", "linux", "--architecture", "amd64",
         "--author", "crishim-tests"])
    run(["umoci", "rm", "--image", f"{layout}:base"])
    run(["umoci", "gc", "--layout", str(layout)])
    return layout


def layout_image(layout: Path, tag: str) -> tuple[bytes, dict[str, Any], LayerBlob]:
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = (layout / "blobs/sha256" / desc["digest"][7:]).read_bytes()
    parsed = json.loads(manifest)
    spec = json.loads((layout / "blobs/sha256" / parsed["config"]["digest"][7:]).read_bytes())
    (layer_desc,) = parsed["layers"]
    data = (layout / "blobs/sha256" / layer_desc["digest"][7:]).read_bytes()
    return manifest, spec, LayerBlob(data=data, diff_id=spec["rootfs"]["diff_ids"][0])


def skopeo_push(layout: Path, tag: str, dest: str, docker_format: bool = False) -> None:
    cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    if docker_format:
        cmd += ["--format", "v2s2"]
    run([*cmd, f"oci:{layout}:{tag}", f"docker://{dest}"])


def push_test_images(registry: Registry, work: Path) -> TestImages:
    layout = build_busybox_layout(work)
    manifest, spec, base = layout_image(layout, "1")
    skopeo_push(layout, "1", f"{registry.host}/busybox:1")
    skopeo_push(layout, "1", f"{registry.host}/library/busybox:latest")
    skopeo_push(layout, "1", f"{registry.host}/busybox-docker:1", docker_format=True)
    busybox = Image(ref=f"{registry.host}/busybox:1", id=json.loads(manifest)["config"]["digest"],
                    manifest_digest=digest_of(manifest), manifest=manifest, spec=spec)

    adds = LayerBlob.from_tar(make_tar([
        entry("data/", tarfile.DIRTYPE, 0o755),
        entry("data/dir/", tarfile.DIRTYPE, 0o755),
        (entry("data/dir/old-a"), b"a"), (entry("data/dir/old-b"), b"b"),
        (entry("data/gone"), b"gone"), (entry("data/keep", uid=1000, gid=1000, mode=0o600), b"keep"),
    ]))
    removes = LayerBlob.from_tar(make_tar([
        entry("data/.wh.gone"),
        entry("data/dir/", tarfile.DIRTYPE, 0o750),
        entry("data/dir/.wh..wh..opq"),
        (entry("data/dir/new"), b"new"),
    ]))
    multilayer = registry.push_image("multilayer", ["1"], [base, adds, removes])
    with_user = registry.push_image("withuser", ["1"], [base], {"User": "1000"})

    amd64 = registry.push_image("multiarch", [], [base], {"Env": ["ARCH=amd64"]}, arch="amd64")
    arm64 = registry.push_image("multiarch", [], [base], {"Env": ["ARCH=arm64"]}, arch="arm64")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": img.manifest_digest, "size": len(img.manifest),
         "platform": {"os": "linux", "architecture": arch}}
        for img, arch in ((arm64, "arm64"), (amd64, "amd64"))]}
    index_body = json.dumps(index).encode()
    registry.push_manifest("multiarch", "1", index_body, OCI_INDEX)

    registry.push_image("tagged", ["a", "b", "c"], [base], {"Labels": {"purpose": "tags"}})
    evil = registry.push_image("evil", ["1"], [base, LayerBlob.from_tar(make_tar([
        (entry("../escaped"), b"owned"),
    ]))])
    return TestImages(registry=registry, layout=layout, busybox=busybox,
                      busybox_docker=f"{registry.host}/busybox-docker:1", base_layer=base,
                      multilayer=multilayer, with_user=with_user,
                      multiarch=f"{registry.host}/multiarch:1", multiarch_digest=digest_of(index_body),
                      tagged=[f"{registry.host}/tagged:{t}" for t in "abc"], evil=evil)


@pytest.fixture(scope="session")
def test_images() -> Iterator[TestImages]:
    work = Path(tempfile.mkdtemp(prefix="crishim-registry-"))
    registry = Registry(host=f"127.0.0.1:{free_port()}", root=work).start()
    try:
        yield push_test_images(registry, work)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def registry(test_images: TestImages) -> Registry:
    return test_images.registry


@pytest.fixture(scope="session")
def busybox_image(test_images: TestImages) -> str:
    """`127.0.0.1:PORT/busybox:1`: one layer of busybox-static with sh, httpd, sleep, cat, top, … and
    an /etc/passwd holding root and user 1000; pullable over plain HTTP."""
    return test_images.busybox.ref


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (the only kind docker-registry accepts), via the C library's crypt."""
    import ctypes

    crypt = ctypes.CDLL("libcrypt.so.1")
    crypt.crypt_gensalt.restype = ctypes.c_char_p
    crypt.crypt.restype = ctypes.c_char_p
    salt = crypt.crypt_gensalt(b"$2y$", 10, os.urandom(16), 16)
    hashed = crypt.crypt(password.encode(), salt)
    return f"{user}:{hashed.decode()}"


@pytest.fixture(scope="session")
def auth_registry(test_images: TestImages) -> Iterator[Registry]:
    """A second registry with htpasswd (basic) auth, holding busybox:1 as `private/busybox:1`."""
    work = Path(tempfile.mkdtemp(prefix="crishim-auth-registry-"))
    (work / "htpasswd").write_text(htpasswd_line("alice", "s3cret") + "\n")
    registry = Registry(host=f"127.0.0.1:{free_port()}", root=work, auth=("alice", "s3cret"))
    registry.start({"auth": {"htpasswd": {"realm": "crishim-test", "path": str(work / "htpasswd")}}})
    try:
        registry.push_image("private/busybox", ["1"], [test_images.base_layer])
        yield registry
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


def basic_auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """A token server for docker-registry's `token` auth: RS256 JWTs signed with `openssl`.

    Grants pull to `alice:s3cret` and nothing to anyone else, as a real token service would.
    """

    service = "crishim-test-registry"
    issuer = "crishim-test-issuer"

    def __init__(self, work: Path) -> None:
        self.key = work / "token.key"
        self.cert = work / "token.crt"
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
             "/CN=crishim-test-token", "-keyout", str(self.key), "-out", str(self.cert)])
        pem = self.cert.read_text().splitlines()
        self.x5c = "".join(line for line in pem if not line.startswith("-----"))

    def token(self, scope: str, granted: bool) -> str:
        import time

        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        access = []
        if granted and scope.startswith("repository:"):
            _, name, actions = scope.split(":")
            access = [{"type": "repository", "name": name, "actions": actions.split(",")}]
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": "alice" if granted else "", "aud": self.service,
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(),
                  "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), capture_output=True,
                                   check=True).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                expected = f"Basic {basic_auth('alice', 's3cret')}"
                given = self.headers.get("Authorization", "")
                if given and given != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": issuer.token(query.get("scope", [""])[0],
                                                         granted=bool(given))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}/token"


@pytest.fixture(scope="session")
def token_registry(test_images: TestImages) -> Iterator[Registry]:
    """A registry with bearer-token auth holding a copy of the session registry's content."""
    work = Path(tempfile.mkdtemp(prefix="crishim-token-registry-"))
    server: ThreadingHTTPServer | None = None
    registry = Registry(host=f"127.0.0.1:{free_port()}", root=work)
    try:
        issuer = TokenIssuer(work)
        server, realm = issuer.serve()
        shutil.copytree(test_images.registry.root / "data", work / "data")
        registry.start({"auth": {"token": {"realm": realm, "service": issuer.service,
                                           "issuer": issuer.issuer,
                                           "rootcertbundle": str(issuer.cert)}}})
        yield registry
    finally:
        registry.stop()
        if server is not None:
            server.shutdown()
            server.server_close()
        shutil.rmtree(work, ignore_errors=True)


HTTP_GET = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"


@contextlib.contextmanager
def registry_in_node(node: TestNode, source: Registry, work: Path) -> Iterator[str]:
    """A second docker-registry on the node's own 127.0.0.1 serving the session registry's storage, so
    image references are the same inside and outside the node."""
    config = work / "node-registry.yml"
    config.write_text(json.dumps({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(source.root / "data")}},
        "http": {"addr": source.host}}))
    proc = subprocess.Popen([*node.prefix(), "docker-registry", "serve", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: node.sh(sys.executable, "-c", HTTP_GET, f"http://{source.host}/v2/",
                             check=False).returncode == 0, timeout=20, what="the node's registry")
        yield source.host
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def node_registry(node: TestNode, test_images: TestImages, tmp_path: Path) -> Iterator[str]:
    """The test images, served inside the test node under the same references."""
    with registry_in_node(node, test_images.registry, tmp_path) as host:
        yield host
