"""ExecSync's timeout on real runc/crun and conmon: never early, ends everything the command started.

critest's "runtime should support execSync with timeout" runs `sleep 4321` with a 1 s timeout, expects
an error, and then `pgrep sleep` in the container must find nothing; kubelet's exec probes read a
DEADLINE_EXCEEDED status as a timed-out probe.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.container.exec_cgroup import V1_HIERARCHY
from crishim.container.manager import ContainerManager
from crishim.errors import DeadlineExceeded
from tests.container.criutil import Cri, cri
from tests.container.ctrutil import IMAGE, Env, Pod, cgroup_dirs, make_pod, spec, wait_until
from tests.harness import poll

__all__ = ["cri"]  # the fixture the tests below use

pytestmark = pytest.mark.root

FOREVER = "trap 'exit 0' TERM; while :; do sleep 0.05; done"
# A direct child, one in a session of its own, and a double-forked orphan the container's init inherits.
SPAWNER = "sleep 432101 & setsid sleep 432102 & (setsid sleep 432103 &); echo spawned; wait"
MARKS = (b"sleep 432101", b"sleep 432102", b"sleep 432103")


@pytest.fixture(params=["runc", "crun"])
async def any_pod(request: pytest.FixtureRequest, env: Env, tmp_path: Path) -> AsyncIterator[Pod]:
    async with make_pod(env, tmp_path, request.param) as p:
        yield p


async def running(env: Env, pod: Pod) -> tuple[ContainerManager, str]:
    mgr = env.manager()
    await mgr.recover()
    c = await mgr.create(pod.sandbox, spec("exec", FOREVER), IMAGE)
    await mgr.start(c.id)
    return mgr, c.id


def host_processes(*marks: bytes) -> list[int]:
    """Live (not zombie) host processes whose command line is one of `marks`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ")
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cmdline in marks:
            found.append(int(entry.name))
    return found


def exec_cgroups(pod: Pod, cid: str) -> list[str]:
    parent = V1_HIERARCHY / pod.sandbox.spec.cgroup_parent.strip("/") / cid
    return sorted(p.name for p in parent.iterdir() if p.is_dir())


async def test_timeout_is_never_early_and_kills_the_command(env: Env, any_pod: Pod) -> None:
    mgr, cid = await running(env, any_pod)
    # 0.9 s of work under a 1 s timeout completes, with its output and exit code.
    result = await mgr.exec_sync(cid, ["sh", "-c", "sleep 0.9; echo done; exit 3"], 1)
    assert (result.exit_code, result.stdout) == (3, b"done\n")

    begin = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="timeout 1s exceeded"):
        await mgr.exec_sync(cid, ["sleep", "4321"], 1)
    elapsed = time.monotonic() - begin
    assert 1.0 <= elapsed < 1.5, elapsed
    # critest's check, right after the call returned.
    left = await mgr.exec_sync(cid, ["sh", "-c", "ps -o stat,args | grep -v grep | grep 'sleep 4321'"], 10)
    assert left.stdout == b"", left.stdout
    assert exec_cgroups(any_pod, cid) == []

    # 0: no timeout at all.
    assert (await mgr.exec_sync(cid, ["sleep", "1.2"], 0)).exit_code == 0


async def test_timeout_kills_every_descendant(env: Env, any_pod: Pod) -> None:
    mgr, cid = await running(env, any_pod)
    begin = time.monotonic()
    task = asyncio.ensure_future(mgr.exec_sync(cid, ["sh", "-c", SPAWNER], 1))
    await wait_until(lambda: len(host_processes(*MARKS)) == 3, what="the spawned sleeps")
    with pytest.raises(DeadlineExceeded):
        await task
    assert time.monotonic() - begin >= 1.0
    assert host_processes(*MARKS) == []
    seen = await mgr.exec_sync(cid, ["ps", "-o", "stat,args"], 10)
    assert not any(mark in seen.stdout for mark in MARKS), seen.stdout
    assert exec_cgroups(any_pod, cid) == []


async def test_exec_runs_in_a_cgroup_of_its_own(env: Env, any_pod: Pod) -> None:
    mgr, cid = await running(env, any_pod)
    result = await mgr.exec_sync(cid, ["cat", "/proc/self/cgroup"], 10)
    freezer = next(line for line in result.stdout.decode().splitlines() if ":freezer:" in line)
    parent = f"{any_pod.sandbox.spec.cgroup_parent}/{cid}/"
    assert freezer.split(":", 2)[2].startswith(parent) and "-exec-" in freezer
    assert exec_cgroups(any_pod, cid) == []


async def test_exit_codes_stay_exact(env: Env, pod: Pod) -> None:
    mgr, cid = await running(env, pod)
    for script, code in (("exit 0", 0), ("exit 1", 1), ("exit 255", 255), ("kill -9 $$", 137),
                         ("kill -TERM $$", 143)):
        assert (await mgr.exec_sync(cid, ["sh", "-c", script], 5)).exit_code == code, script


async def test_background_process_of_a_finished_exec(env: Env, any_pod: Pod) -> None:
    """A command that leaves something running in the background returns at once (as in containerd);
    what it left is ended with the container, and its cgroup goes with the container's."""
    mgr, cid = await running(env, any_pod)
    begin = time.monotonic()
    result = await mgr.exec_sync(cid, ["sh", "-c", "sleep 432104 >/dev/null 2>&1 & echo left"], 10)
    assert (result.exit_code, result.stdout) == (0, b"left\n")
    assert time.monotonic() - begin < 5
    assert len(host_processes(b"sleep 432104")) == 1
    assert len(exec_cgroups(any_pod, cid)) == 1
    await mgr.remove(cid)
    await wait_until(lambda: not host_processes(b"sleep 432104"), what="the background sleep to end")
    assert cgroup_dirs(any_pod.sandbox.spec.cgroup_parent, cid) == []


async def test_cancelled_exec_leaves_nothing(env: Env, pod: Pod) -> None:
    mgr, cid = await running(env, pod)
    task = asyncio.ensure_future(mgr.exec_sync(cid, ["sh", "-c", SPAWNER], 0))
    await wait_until(lambda: len(host_processes(*MARKS)) == 3, what="the spawned sleeps")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert host_processes(*MARKS) == []
    assert exec_cgroups(pod, cid) == []


def exec_sync_rpc(cri: Cri, container_id: str, cmd: list[str], timeout: int) -> api_pb2.ExecSyncResponse:
    """As kubelet calls it: the gRPC deadline is the exec timeout plus its own 2 minutes."""
    return cri.server.runtime().ExecSync(api_pb2.ExecSyncRequest(
        container_id=container_id, cmd=cmd, timeout=timeout), timeout=timeout + 120)


def test_exec_sync_timeout_through_the_server(cri: Cri) -> None:
    """critest's spec, then what kubelet's prober relies on: DEADLINE_EXCEEDED, not an exit code."""
    cid = cri.container(cri.pod("exec-timeout"), "sleeper")
    assert exec_sync_rpc(cri, cid, ["sh", "-c", "sleep 0.9; echo -n in-time"], 1).stdout == b"in-time"

    begin = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        exec_sync_rpc(cri, cid, ["sleep", "4321"], 1)
    elapsed = time.monotonic() - begin
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timeout 1s exceeded" in err.value.details()
    assert 1.0 <= elapsed < 1.5, elapsed
    after = exec_sync_rpc(cri, cid, ["sh", "-c", "ps -o args | grep '^sleep 4321' || true"], 30)
    assert (after.exit_code, after.stdout, after.stderr) == (0, b"", b"")

    begin = time.monotonic()
    call = cri.server.runtime().ExecSync.future(api_pb2.ExecSyncRequest(
        container_id=cid, cmd=["sh", "-c", SPAWNER], timeout=1), timeout=121)
    poll(lambda: len(host_processes(*MARKS)) == 3, what="the spawned sleeps")
    with pytest.raises(grpc.RpcError) as err:
        call.result()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - begin >= 1.0
    assert host_processes(*MARKS) == []
    seen = exec_sync_rpc(cri, cid, ["ps", "-o", "args"], 30).stdout
    assert not any(mark in seen for mark in MARKS), seen

    # 0 is no timeout; exit codes stay exact; a negative timeout names the field.
    assert exec_sync_rpc(cri, cid, ["sh", "-c", "sleep 1.1; exit 42"], 0).exit_code == 42
    with pytest.raises(grpc.RpcError) as err:
        exec_sync_rpc(cri, cid, ["true"], -1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "timeout" in err.value.details()
