"""Who may read crishim's state: nobody but root, while containers of any uid keep working.

A local user who can walk into the image store can run a setuid-root binary of any pulled image
(containerd CVE-2021-41103). The probe runs as `nobody` against a live server with a pulled image and a
running container, whose state sits under a directory `nobody` may traverse: what it cannot reach is
kept from it by crishim's own modes, not by the test's temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import CrishimServer, TestNode, remove_root
from tests.sandbox.podutil import pod_config, run_pod
from tests.test_e2e import container_config, exec_sync, start_container

pytestmark = pytest.mark.root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# What `nobody` manages to do with each path it is given (stat, list a dir, open a file, exec a file).
PROBE = """
import json, os, sys
done = {}
for path, kind in json.load(sys.stdin):
    got = []
    try:
        os.stat(path, follow_symlinks=False)
        got.append("stat")
    except OSError:
        pass
    if kind == "dir":
        try:
            os.listdir(path)
            got.append("list")
        except OSError:
            pass
    if kind == "file":
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_NOFOLLOW))
            got.append("open")
        except OSError:
            pass
        if os.access(path, os.X_OK):
            got.append("exec")
    done[path] = got
print(json.dumps(done))
"""


def probe_as_nobody(paths: list[tuple[str, str]]) -> dict[str, list[str]]:
    out = subprocess.run([*NOBODY, sys.executable, "-I", "-c", PROBE], input=json.dumps(paths),
                         capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


def tree(root: Path) -> list[tuple[str, str]]:
    """Every path under `root` (itself included) with its kind, walked as root without following links."""
    found = [(str(root), "dir")]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            kind = "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"
            found.append((path, kind))
    return found


@pytest.fixture
def open_server(node: TestNode) -> Iterator[CrishimServer]:
    """A server whose root `nobody` may traverse (0711), laid out as an older crishim left it: state and
    run dirs and the image store 0755, the pod record log 0644."""
    base = Path(tempfile.mkdtemp(prefix="crishim-perms-"))
    base.chmod(0o711)
    server = CrishimServer(root=base / "crishim", node=node)
    for path in (server.root, server.state_dir / "images/layers", server.root / "run/containers"):
        path.mkdir(parents=True)
        path.chmod(0o755)
    server.root.chmod(0o711)
    (server.state_dir / "sandboxes.log").write_bytes(b"")
    (server.state_dir / "sandboxes.log").chmod(0o644)
    server.conf_dir.mkdir()
    server.write_network()
    try:
        yield server
    finally:
        server.remove_all_pods()
        server.stop()
        remove_root(server.root)
        shutil.rmtree(base, ignore_errors=True)


def test_nobody_reaches_nothing_while_a_nonroot_container_runs(open_server: CrishimServer,
                                                              node_registry: str, busybox_image: str) -> None:
    server = open_server.start()
    state_dir, run_dir = server.state_dir, server.root / "run"
    mode = {p: stat.S_IMODE(p.stat().st_mode) for p in (
        state_dir, run_dir, state_dir / "images", state_dir / "images/layers", run_dir / "containers",
        state_dir / "sandboxes.log")}
    assert mode == {state_dir: 0o700, run_dir: 0o711, state_dir / "images": 0o700,
                    state_dir / "images/layers": 0o700, run_dir / "containers": 0o700,
                    state_dir / "sandboxes.log": 0o600}

    server.images().PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=busybox_image)),
                              timeout=60)
    pod = pod_config("perms", annotations={"secret": "annotation"})
    pod_id = run_pod(server, pod)
    as_user = api_pb2.LinuxContainerConfig(security_context=api_pb2.LinuxContainerSecurityContext(
        run_as_user=api_pb2.Int64Value(value=1000)))
    cid = start_container(server, pod_id, pod, container_config(
        "reader", busybox_image, "sh", "-c", "cat /etc/group > /tmp/group; exec sleep 1000",
        linux=as_user))
    result = exec_sync(server, cid, "sh", "-c", "id -u; cat /tmp/group; ls /bin/busybox")
    assert (result.exit_code, result.stdout.decode()) == \
        (0, "1000\nroot:x:0:\nuser:x:1000:\n/bin/busybox\n"), result.stderr

    paths = tree(state_dir) + tree(run_dir)
    assert len(paths) > 100  # the layer, the container's rootfs, pod files: all there to be probed
    reached = probe_as_nobody([(str(server.root), "dir"), *paths])
    assert reached.pop(str(server.root)) == ["stat"]  # the control: the probe does get this far
    allowed = {str(state_dir): ["stat"], str(run_dir): ["stat"]}
    allowed.update({str(p): ["stat"] for p in run_dir.iterdir()})  # by name through the 0711 run dir
    leaks = {path: got for path, got in reached.items() if got and got != allowed.get(path)}
    assert leaks == {}

    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([*NOBODY, sys.executable, "-I", "-c",
                        f"import socket; socket.socket(socket.AF_UNIX).connect({str(server.socket)!r})"],
                       check=True, capture_output=True)
    assert stat.S_ISSOCK(server.socket.stat().st_mode)

    container_dir = state_dir / "containers" / cid
    records = [state_dir / "sandboxes.log", state_dir / "images/images.json",
               *(state_dir / "images/rootfs").iterdir(), *container_dir.glob("*.json")]
    assert len(records) >= 5
    assert {str(p): stat.S_IMODE(p.stat().st_mode) for p in records} == \
        {str(p): 0o600 for p in records}
