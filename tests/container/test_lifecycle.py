"""Container lifecycle on real runc/crun and conmon, in namespaces made by the test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from crishim.container import conmon
from crishim.container import manager as manager_mod
from crishim.container.conmon import read_cri_log
from crishim.container.manager import ContainerManager, ListFilter
from crishim.container.model import (
    ContainerSpec,
    ContainerState,
    Mount,
    Resources,
    SeccompKind,
    SecurityContext,
)
from crishim.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidArgument
from crishim.sandbox.model import NamespaceMode
from tests.container.ctrutil import (
    IMAGE,
    Env,
    Image,
    Pod,
    cgroup_dirs,
    make_pod,
    mounts_under,
    spec,
    wait_until,
)
from tests.harness import run

pytestmark = pytest.mark.root

FOREVER = "trap 'exit 0' TERM; while :; do sleep 0.05; done"


@pytest.fixture(params=["runc", "crun"])
async def any_pod(request: pytest.FixtureRequest, env: Env, tmp_path: Path) -> AsyncIterator[Pod]:
    async with make_pod(env, tmp_path, request.param) as p:
        yield p


async def started(env: Env, pod: Pod, name: str, script: str, **kwargs: object) -> str:
    mgr = env.managers[-1]
    c = await mgr.create(pod.sandbox, spec(name, script, **kwargs), IMAGE)
    await mgr.start(c.id)
    return c.id


async def finished(mgr: ContainerManager, cid: str) -> None:
    async def done() -> bool:
        return (await mgr.status(cid)).state == ContainerState.EXITED

    await wait_until(done, what=f"container {cid[:12]} to exit")


def log_lines(path: str) -> list[tuple[str, str, str]]:
    lines = Path(path).read_text().splitlines()
    return [(stream, tag, text) for _, stream, tag, text in (line.split(" ", 3) for line in lines)]


async def test_exit_codes_and_cri_log(env: Env, any_pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    changes: list[tuple[str, str]] = []
    mgr.on_change = lambda c, change: changes.append((c.spec.name, change))
    ok = await started(env, any_pod, "ok", "echo out; echo err >&2; printf partial")
    bad = await started(env, any_pod, "bad", "exit 3")
    await finished(mgr, ok)
    await finished(mgr, bad)
    st = await mgr.status(ok)
    assert (st.state, st.exit_code, st.reason) == (ContainerState.EXITED, 0, "Completed")
    assert st.created_at <= st.started_at <= st.finished_at
    lines = log_lines(st.log_path)
    assert ("stdout", "F", "out") in lines
    assert ("stderr", "F", "err") in lines
    assert ("stdout", "P", "partial") in lines
    st = await mgr.status(bad)
    assert (st.exit_code, st.reason) == (3, "Error")
    await mgr.remove(ok)
    assert [c for n, c in changes if n == "ok"] == ["created", "started", "stopped", "deleted"]


async def test_tty_and_stdin(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    cid = await started(env, pod, "tty", "tty; echo done", tty=True, stdin=True)
    await finished(mgr, cid)
    st = await mgr.status(cid)
    assert st.exit_code == 0

    def drained() -> list[str]:
        texts = [text for stream, _, text in log_lines(st.log_path) if stream == "stdout"]
        return texts if texts and "done" in texts[-1] else []

    texts = await wait_until(drained, what="the pty's last output in the log")  # conmon may still drain it
    assert texts[0].startswith("/dev/pts/")


async def test_stop_grace_then_kill(env: Env, any_pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    polite = await started(env, any_pod, "polite", FOREVER)
    stubborn = await started(env, any_pod, "stubborn", "trap '' TERM; while :; do sleep 0.05; done")
    await mgr.stop(polite, 10)
    assert (await mgr.status(polite)).exit_code == 0
    await mgr.stop(stubborn, 0.5)
    st = await mgr.status(stubborn)
    assert (st.state, st.exit_code, st.reason) == (ContainerState.EXITED, 137, "Error")
    await mgr.stop(stubborn, 1)  # idempotent
    await mgr.stop("0" * 64, 1)  # unknown: nothing to stop


async def test_stop_as_the_container_exits_by_itself(env: Env, any_pod: Pod) -> None:
    """kubelet may stop a container in the moment it exits: the runtime already calls it "not running"
    while conmon has yet to record the exit. The stop waits for that record and succeeds. conmon is
    held (SIGSTOP) to keep that moment open."""
    mgr = env.manager()
    await mgr.recover()
    cid = await started(env, any_pod, "brief", "read line; exit 4", stdin=True)
    c = await mgr.status(cid)
    os.kill(c.conmon_pid, signal.SIGSTOP)
    try:
        os.kill(c.pid, signal.SIGKILL)  # as if it ended by itself; conmon cannot record it yet
        handler = mgr.runtimes[c.runtime_handler]

        async def stopped() -> bool:
            state = await handler.state(cid)
            return state is not None and state.get("status") == "stopped"

        await wait_until(stopped, what="the runtime to see the container gone")
        stop = asyncio.create_task(mgr.stop(cid, 10))
        await asyncio.sleep(0.3)  # let the stop meet the "not running" answer before conmon records it
        assert not stop.done(), stop
    finally:
        os.kill(c.conmon_pid, signal.SIGCONT)
    await asyncio.wait_for(stop, 30)
    st = await mgr.status(cid)
    assert (st.state, st.exit_code) == (ContainerState.EXITED, 137)
    await mgr.remove(cid)


async def test_exec_sync(env: Env, any_pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    cid = await started(env, any_pod, "exec", FOREVER, envs=[("FOO", "bar")])
    result = await mgr.exec_sync(cid, ["sh", "-c", "echo out-$FOO; echo err >&2; exit 5"], 10)
    assert (result.exit_code, result.stdout, result.stderr) == (5, b"out-bar\n", b"err\n")
    with pytest.raises(DeadlineExceeded):
        await mgr.exec_sync(cid, ["sh", "-c", "touch /tmp/sleeper; exec sleep 1000"], 1)
    procs = await mgr.exec_sync(cid, ["ps", "-o", "args"], 10)
    assert b"sleep 1000" not in procs.stdout
    assert (await mgr.exec_sync(cid, ["ls", "/tmp/sleeper"], 10)).exit_code == 0
    # A caller that gives up (gRPC deadline, cancellation) leaves no exec'd process behind.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(mgr.exec_sync(cid, ["sleep", "999"], 0), 0.5)
    procs = await mgr.exec_sync(cid, ["ps", "-o", "args"], 10)
    assert b"sleep 999" not in procs.stdout
    assert os.listdir(env.run_dir / "exec") == []
    await mgr.stop(cid, 0)
    with pytest.raises(FailedPrecondition):
        await mgr.exec_sync(cid, ["true"], 10)


async def test_exec_output_cap(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    mgr.exec_output_limit = 1000
    await mgr.recover()
    cid = await started(env, pod, "cap", FOREVER)
    result = await mgr.exec_sync(cid, ["sh", "-c", "yes | head -c 100000"], 10)
    assert result.stdout == b"y\n" * 500


async def test_oom_killed(env: Env, any_pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    limit = 16 * 1024 * 1024
    # kubelet always sends a limit for every huge page size; cgroup v1 here has no hugetlb.
    cid = await started(env, any_pod, "oom", "tail /dev/zero",
                        resources=Resources(memory_limit_in_bytes=limit,
                                            memory_swap_limit_in_bytes=limit,
                                            hugepage_limits={"2MB": 0}))
    await finished(mgr, cid)
    st = await mgr.status(cid)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")


async def test_security_context(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    sec = SecurityContext(readonly_rootfs=True, drop_capabilities=["NET_RAW"], run_as_user=1000,
                          supplemental_groups=[3000], seccomp=SeccompKind.RUNTIME_DEFAULT,
                          no_new_privs=True)
    cid = await started(env, pod, "sec", FOREVER, security=sec)

    async def sh(script: str) -> tuple[int, str]:
        r = await mgr.exec_sync(cid, ["sh", "-c", script], 10)
        return r.exit_code, (r.stdout + r.stderr).decode()

    assert await sh("id -u; id -g; id -G") == (0, "1000\n1000\n1000 2000 3000\n")
    code, out = await sh("touch /newfile")
    assert code != 0 and "Read-only file system" in out
    code, out = await sh("grep CapBnd /proc/self/status")
    bounding = int(out.split()[1], 16)
    assert not bounding & (1 << 13)  # CAP_NET_RAW
    assert bounding & (1 << 0)  # CAP_CHOWN stays
    code, out = await sh("grep -E 'Seccomp:|NoNewPrivs:' /proc/self/status")
    assert "Seccomp:\t2" in out and "NoNewPrivs:\t1" in out
    code, out = await sh("unshare -n true")
    assert code != 0
    assert (await sh("cat /proc/kcore"))[0] != 0  # masked
    assert (await sh("echo 1 > /dev/shm/x && cat /dev/shm/x")) == (0, "1\n")  # pod shm is writable


async def test_run_as_username_and_image_user(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    c = await mgr.create(pod.sandbox, spec("named", "id -u; id -g", security=SecurityContext(
        run_as_username="app", run_as_group=65534)), IMAGE)
    await mgr.start(c.id)
    image = Image(IMAGE.id, {**IMAGE.config, "User": "nobody"})
    d = await mgr.create(pod.sandbox, spec("imguser", "id -u"), image)
    await mgr.start(d.id)
    await finished(mgr, c.id)
    await finished(mgr, d.id)
    assert [t for _, _, t in log_lines(c.log_path)] == ["1000", "65534"]
    assert [t for _, _, t in log_lines(d.log_path)] == ["65534"]
    with pytest.raises(InvalidArgument):
        await mgr.create(pod.sandbox, spec("g", "true", security=SecurityContext(run_as_group=5)),
                         IMAGE)
    with pytest.raises(InvalidArgument):
        await mgr.create(pod.sandbox, spec("u", "true", security=SecurityContext(
            run_as_username="ghost")), IMAGE)


async def test_pod_namespaces_and_files(env: Env, any_pod: Pod, tmp_path: Path) -> None:
    mgr = env.manager()
    await mgr.recover()
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("from-host")
    cid = await started(env, any_pod, "ns", FOREVER,
                        mounts=[Mount("/data", str(data), readonly=True)])

    async def out(*cmd: str) -> str:
        r = await mgr.exec_sync(cid, list(cmd), 10)
        assert r.exit_code == 0, r
        return r.stdout.decode()

    assert "10.77.0.5/24" in await out("ip", "addr", "show", "eth0")
    assert (await out("hostname")).strip() == "testpod"
    assert "nameserver 192.0.2.53" in await out("cat", "/etc/resolv.conf")
    assert await out("cat", "/data/f") == "from-host"
    r = await mgr.exec_sync(cid, ["sh", "-c", "echo x > /data/g"], 10)
    assert r.exit_code != 0
    # The container's pid 1 is its own command, in its own PID namespace.
    assert "trap" in await out("cat", "/proc/1/cmdline")


async def test_two_containers_share_loopback(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    server = await started(env, pod, "server", "mkdir /www; echo hello-from-server > /www/index.html;"
                           " exec httpd -f -p 8080 -h /www")
    client = await started(env, pod, "client", FOREVER)

    async def answered() -> bool:
        r = await mgr.exec_sync(client, ["wget", "-qO-", "http://127.0.0.1:8080/"], 5)
        return r.stdout == b"hello-from-server\n"

    await wait_until(answered, what="server container to answer on 127.0.0.1:8080")
    await mgr.stop(server, 0)


async def test_pod_pid_namespace(env: Env, any_pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    shared = SecurityContext(pid_mode=NamespaceMode.POD)
    first = await started(env, any_pod, "first", "exec sleep 12345", security=shared)
    second = await started(env, any_pod, "second", FOREVER, security=shared)
    ps = (await mgr.exec_sync(second, ["ps", "-o", "pid,args"], 10)).stdout.decode()
    assert "sleep 12345" in ps
    pid1 = (await mgr.exec_sync(second, ["cat", "/proc/1/cmdline"], 10)).stdout
    assert pid1 == b"/catatonit\0-P\0"  # the pod's pause process is PID 1
    # An orphan is reparented to it and, once it exits, reaped: no zombie stays.
    states = ["sh", "-c", "cat /proc/[0-9]*/stat"]
    sleeping = (await mgr.exec_sync(second, states, 10)).stdout.count(b"(sleep)")
    await mgr.exec_sync(second, ["sh", "-c", "(sleep 1 &)"], 10)
    assert (await mgr.exec_sync(second, states, 10)).stdout.count(b"(sleep)") == sleeping + 1

    async def orphan_reaped() -> bool:
        stats = (await mgr.exec_sync(second, states, 10)).stdout.decode()
        return stats.count("(sleep)") == sleeping and ") Z " not in stats

    await wait_until(orphan_reaped, what="the orphan to exit and be reaped by the pause process")
    assert [c.spec.name for c in mgr.list_containers()] == ["first", "second"]
    await mgr.stop_all(any_pod.sandbox.id, 1)
    assert (await mgr.status(first)).state == ContainerState.EXITED
    await mgr.remove_all(any_pod.sandbox.id)
    assert run(["ip", "netns", "pids", any_pod.netns]).stdout.split() == []
    assert os.listdir(env.state) == []
    assert os.listdir(env.run_dir / "exits") == []
    parent = Path("/sys/fs/cgroup/memory", any_pod.sandbox.spec.cgroup_parent.lstrip("/"))
    assert [p for p in await asyncio.to_thread(os.listdir, parent) if (parent / p).is_dir()] == []


async def test_restart_recovery(env: Env, any_pod: Pod) -> None:
    first = env.manager()
    await first.recover()
    keeps = await started(env, any_pod, "keeps", FOREVER)
    ends = await started(env, any_pod, "ends", "read line < /dev/shm/go 2>/dev/null; "
                         "while [ ! -e /dev/shm/go ]; do sleep 0.05; done; exit 7")
    waiting = (await first.create(any_pod.sandbox, spec("waiting", "exit 9"), IMAGE)).id
    await first.close()
    await asyncio.to_thread(Path(any_pod.sandbox.shm_path, "go").write_text, "")
    # The container exits while no crishim watches; its conmon records the code.
    exit_file = Path(first.exit_dir, ends)
    await wait_until(exit_file.exists, what="exit file")
    # A create cut short before its record was written leaves a directory with a mounted rootfs.
    half = env.state / ("f" * 64)
    await asyncio.to_thread(half.mkdir)
    await (await env.provider.prepare_rootfs(IMAGE.id, half.name, half)).mount()
    second = env.manager()
    await second.recover()
    assert not await asyncio.to_thread(half.exists)
    assert mounts_under(half) == []
    assert (await second.status(keeps)).state == ContainerState.RUNNING
    st = await second.status(ends)
    assert (st.state, st.exit_code) == (ContainerState.EXITED, 7)
    assert (await second.status(waiting)).state == ContainerState.CREATED
    await second.start(waiting)
    await finished(second, waiting)
    assert (await second.status(waiting)).exit_code == 9
    await second.stop(keeps, 5)
    assert (await second.status(keeps)).exit_code == 0
    assert {c.spec.name for c in second.list_containers()} == {"keeps", "ends", "waiting"}


async def test_monitor_killed(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    cid = await started(env, pod, "orphan", FOREVER)
    pid = (await mgr.status(cid)).pid
    os.kill((await mgr.status(cid)).conmon_pid, signal.SIGKILL)
    await finished(mgr, cid)
    st = await mgr.status(cid)
    assert (st.exit_code, st.reason) == (255, "Error") and "conmon" in st.message
    # The container's processes do not outlive their monitor.
    await wait_until(lambda: not alive(pid), what="the orphan to be killed")


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for a lazy reaper counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def test_remove_answers_first_and_a_crash_in_between_loses_nothing(
        env: Env, pod: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    """RemoveContainer answers once the runtime's state and the record are gone; the rootfs and the
    directory go after. A crishim that dies in between does not bring the container back at restart
    and removes what was left."""
    first = env.manager()
    await first.recover()
    cid = await started(env, pod, "removed", FOREVER)
    cdir = env.state / cid

    async def died_before_cleanup(container: object) -> None:
        return None

    monkeypatch.setattr(first, "_cleanup", died_before_cleanup)
    await first.remove(cid)
    assert first.get(cid) is None
    assert cgroup_dirs(pod.sandbox.spec.cgroup_parent, cid) == []  # runc delete ran before the answer
    assert await asyncio.to_thread(cdir.is_dir) and mounts_under(cdir)
    second = env.manager()
    await second.recover()
    assert second.get(cid) is None and second.list_containers() == []
    assert not await asyncio.to_thread(cdir.exists) and mounts_under(cdir) == []


async def test_remove_leaves_nothing(env: Env, any_pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    running = await started(env, any_pod, "running", FOREVER)
    created = (await mgr.create(any_pod.sandbox, spec("created", FOREVER), IMAGE)).id
    exited = await started(env, any_pod, "exited", "true")
    await finished(mgr, exited)
    await mgr.exec_sync(running, ["true"], 5)
    assert cgroup_dirs(any_pod.sandbox.spec.cgroup_parent, running)
    await mgr.stop_all(any_pod.sandbox.id)
    assert all(c.state == ContainerState.EXITED
               for c in mgr.containers_of(any_pod.sandbox.id)), mgr.containers_of(any_pod.sandbox.id)
    await mgr.remove_all(any_pod.sandbox.id)
    await mgr.remove(running)  # unknown now: fine
    assert mgr.containers_of(any_pod.sandbox.id) == []
    assert run(["ip", "netns", "pids", any_pod.netns]).stdout.split() == []
    assert mounts_under(env.state) == []
    for cid in (running, created, exited):
        assert cgroup_dirs(any_pod.sandbox.spec.cgroup_parent, cid) == []
    assert os.listdir(env.state) == []
    for sub in ("exits", "sock", "exec", "runc", "crun"):
        assert os.listdir(env.run_dir / sub) == [], sub


async def test_failed_create_leaves_nothing(env: Env, any_pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    broken = ContainerSpec(name="broken", command=["/no/such/binary"])
    with pytest.raises(FailedPrecondition, match=r"(?i)cannot be set up as requested.*no such file"):
        await mgr.create(any_pod.sandbox, broken, IMAGE)
    assert mgr.list_containers() == []
    assert os.listdir(env.state) == []
    assert mounts_under(env.state) == []
    assert run(["ip", "netns", "pids", any_pod.netns]).stdout.split() == []
    # The name is free again.
    cid = await started(env, any_pod, "broken", "exit 0")
    await finished(mgr, cid)


async def test_names_filters_update_and_reopen(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    cid = await started(env, pod, "main", "while :; do echo tick; sleep 0.05; done",
                        labels={"app": "x"})
    with pytest.raises(AlreadyExists):
        await mgr.create(pod.sandbox, spec("main", "true"), IMAGE)
    assert [c.id for c in mgr.list_containers(ListFilter(id_prefix=cid[:8]))] == [cid]
    assert mgr.list_containers(ListFilter(labels={"app": "y"})) == []
    assert mgr.list_containers(ListFilter(state=ContainerState.EXITED)) == []
    assert [c.id for c in mgr.list_containers(ListFilter(sandbox_id=pod.sandbox.id))] == [cid]

    limit = 64 * 1024 * 1024
    await mgr.update_resources(cid, Resources(memory_limit_in_bytes=limit, cpu_shares=256))
    [memory] = cgroup_dirs_for(pod, cid, "memory")
    assert int((memory / "memory.limit_in_bytes").read_text()) == limit
    assert (await mgr.status(cid)).spec.resources.cpu_shares == 256

    log = await mgr.status(cid)
    rotated = Path(f"{log.log_path}.1")
    os.rename(log.log_path, rotated)
    await mgr.reopen_log(cid)

    new_log = Path(log.log_path)
    await wait_until(lambda: new_log.exists() and "tick" in new_log.read_text(),
                     what="lines in the reopened log")
    size = (await asyncio.to_thread(rotated.stat)).st_size
    start = len((await asyncio.to_thread(new_log.read_text)).splitlines())
    await wait_until(lambda: len(new_log.read_text().splitlines()) >= start + 2,
                     what="the new log to grow")
    assert (await asyncio.to_thread(rotated.stat)).st_size == size
    await mgr.stop(cid, 0)
    with pytest.raises(FailedPrecondition):
        await mgr.reopen_log(cid)


def cgroup_dirs_for(pod: Pod, cid: str, controller: str) -> list[Path]:
    return [p for p in cgroup_dirs(pod.sandbox.spec.cgroup_parent, cid)
            if p.parts[4] == controller]


def test_read_cri_log(tmp_path: Path) -> None:
    data = (b"2026-11-28T08:23:08.392258621+00:00 stdout F hello\n"
            b"2026-11-28T08:23:08.392258621+00:00 stderr P par\n"
            b"2026-11-28T08:23:08.392258621+00:00 stderr F tial\n"
            b"2026-11-28T08:23:08.392258621+00:00 stdout F \n")
    (tmp_path / "log").write_bytes(data)
    assert read_cri_log(str(tmp_path / "log"), 100) == (b"hello\n\n", b"partial\n")
    assert read_cri_log(str(tmp_path / "log"), 3) == (b"hel", b"par")
    assert read_cri_log(str(tmp_path / "missing"), 3) == (b"", b"")


async def test_exec_cut_short_by_a_crash_is_reaped_at_restart(env: Env, pod: Pod) -> None:
    """An ExecSync running when crishim died has no caller any more: the restarted crishim kills what
    it started and removes its bundle (found by the chaos test, seed 21: the bundle stayed forever)."""
    first = env.manager()
    await first.recover()
    cid = await started(env, pod, "execd", FOREVER)
    cut_short = asyncio.create_task(first.exec_sync(cid, ["sleep", "3600"], 0))
    pidfiles = await wait_until(lambda: list((env.run_dir / "exec").glob("*/pidfile")),
                                what="the exec to start")
    exec_pid = int(pidfiles[0].read_text())
    assert alive(exec_pid)
    second = env.manager()
    await second.recover()
    assert not alive(exec_pid)
    assert os.listdir(env.run_dir / "exec") == []
    cgroups = cgroup_dirs(pod.sandbox.spec.cgroup_parent, cid)
    assert cgroups and [p for d in cgroups for p in d.iterdir() if p.is_dir()] == []
    with contextlib.suppress(Exception):  # the first crishim's call ends with its killed exec
        await cut_short
    assert (await second.status(cid)).state == ContainerState.RUNNING


async def test_stop_racing_a_remove_ends_at_once(env: Env, pod: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    """A StopPodSandbox's stop of a container that a RemoveContainer takes away meanwhile is done: it
    must not wait for an exit nobody reports any more (found by the chaos test, seed 204: the pod's
    Stop hung for a minute after a restart, under kubelet's racing cleanup calls)."""
    mgr = env.manager()
    await mgr.recover()
    cid = await started(env, pod, "raced", FOREVER)
    handler = mgr.runtimes[(await mgr.status(cid)).runtime_handler]
    real_kill = type(handler).kill
    removing: list[asyncio.Task[None]] = []

    async def kill_after_a_remove(self: Any, container_id: str, signal_name: str) -> None:
        if not removing:  # the racing RemoveContainer runs to its end before this SIGKILL is sent
            removing.append(asyncio.create_task(mgr.remove(cid)))
            await removing[0]
        await real_kill(self, container_id, signal_name)

    monkeypatch.setattr(type(handler), "kill", kill_after_a_remove)
    await asyncio.wait_for(mgr.stop(cid, 0), 5)
    assert mgr.get(cid) is None


def present(paths: list[Path]) -> list[Path]:
    return [p for p in paths if os.path.lexists(p)]


async def test_a_crash_after_a_removed_containers_dir_went_leaves_no_monitor_files(
        env: Env, pod: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    """The background cleanup removes the directory, then conmon's exit file and attach-socket entry; a
    crash in between left those two forever (found by the chaos test, seeds 323 and 324)."""
    first = env.manager()
    await first.recover()
    cid = await started(env, pod, "half-cleaned", FOREVER)
    real_remove_tree = manager_mod._remove_tree

    def died_after_the_dir(tree: Path, *files: Path) -> None:
        real_remove_tree(tree)

    monkeypatch.setattr(manager_mod, "_remove_tree", died_after_the_dir)
    await first.remove(cid)
    await first.settle()
    monkeypatch.undo()
    monitor_files = [env.run_dir / "exits" / cid, env.run_dir / "sock" / cid]
    assert present(monitor_files) and not present([env.state / cid])
    second = env.manager()
    await second.recover()
    assert present(monitor_files) == []


def test_attach_links_are_told_apart_by_target_as_conmon_cuts_their_names(tmp_path: Path) -> None:
    """conmon names its attach-socket link after the uuid it was given, cut short where
    `socket_dir/<uuid>/attach` would not fit a socket address: a run_dir a few characters longer than
    usual (pytest's past pytest-999) left every exec's link behind when it was removed by name, and a
    restart's stray sweep by name would take a live container's."""
    sock = tmp_path / "sock"
    sock.mkdir()
    live, other, gone = tmp_path / "live", tmp_path / "other", tmp_path / "exec-gone"
    live.mkdir()
    other.mkdir()
    cid, exec_id = "a" * 64, "b" * 16 + "-exec-" + "c" * 12
    (sock / cid[:40]).symlink_to(live)
    (sock / cid[:30]).symlink_to(other)  # a prefix of the same uuid, another container's bundle
    (sock / exec_id[:25]).symlink_to(gone)
    conmon.remove_attach_link(str(sock), cid, str(live))
    assert sorted(p.name for p in sock.iterdir()) == sorted([cid[:30], exec_id[:25]])
    assert conmon.remove_stray_attach_links(str(sock)) == [str(sock / exec_id[:25])]
    assert [p.name for p in sock.iterdir()] == [cid[:30]]
