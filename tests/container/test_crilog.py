"""CRI logs as containerd writes them (16 KiB pieces, remainder in the F record), from conmon's records:
the line rules against a model of containerd's logger, then real containers under conmon, conmon's file
rotated under load, and the copy picked up again after a clean stop and after kill -9."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crishim.api.runtime.v1 import api_pb2
from crishim.container import crilog
from crishim.container.conmon import read_cri_log
from crishim.container.model import ContainerState, Mount
from crishim.errors import FailedPrecondition
from tests.container.ctrutil import IMAGE, Env, Pod, spec, wait_until
from tests.container.hostserver import create, host_server, pull, start
from tests.harness import CrishimServer, poll
from tests.sandbox.podutil import pod_config, stop_and_remove

MAX = crilog.MAX_LINE


def containerd_records(data: bytes, max_line: int) -> list[tuple[bytes, bytes]]:
    """What containerd's CRI logger writes for one stream's bytes: (tag, text) per record."""
    out: list[tuple[bytes, bytes]] = []
    *lines, rest = data.split(b"\n")
    for line in lines:
        line = line.removesuffix(b"\r")
        while len(line) > max_line:
            out.append((b"P", line[:max_line]))
            line = line[max_line:]
        out.append((b"F", line))
    while rest:
        out.append((b"P", rest[:max_line]))
        rest = rest[max_line:]
    return out


def conmon_records(stream: bytes, data: bytes, reads: list[int]) -> Iterator[bytes]:
    """What conmon writes for `data` read in pieces of `reads` bytes (cycled): a record per line end
    found in a read, a P record for a read's tail without one."""
    pos = 0
    for size in itertools.cycle(reads):
        if pos >= len(data):
            return
        buf = data[pos:pos + size]
        pos += len(buf)
        while buf:
            end = buf.find(b"\n")
            if end < 0:
                yield b"2026-12-04T10:00:00.000000001+00:00 %s P %s" % (stream, buf)
                break
            yield b"2026-12-04T10:00:00.000000001+00:00 %s F %s" % (stream, buf[:end])
            buf = buf[end + 1:]


def assemble(records: list[bytes], max_line: int, rng: random.Random | None = None
             ) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """The CRI records per stream, the conmon records given in blocks as the copier reads them
    (split at random record boundaries)."""
    assembler = crilog.LineAssembler(max_line)
    out: list[bytes] = []
    rng = rng or random.Random(0)
    pos = 0
    while pos < len(records):
        size = rng.randint(1, 6)
        assembler.feed_block(b"".join(r + b"\n" for r in records[pos:pos + size]), out)
        pos += size
    assembler.flush(out)
    *lines, rest = b"".join(out).split(b"\n")
    assert rest == b""
    streams: dict[bytes, list[tuple[bytes, bytes]]] = {b"stdout": [], b"stderr": []}
    for line in lines:
        _, stream, tag, text = line.split(b" ", 3)
        streams[stream].append((tag, text))
    return streams


output = st.binary(max_size=200).map(lambda b: bytes(b"a\r\n"[x % 3] for x in b))


reads = st.lists(st.integers(1, 12), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(out=output, err=output, out_reads=reads, err_reads=reads, extra=st.integers(0, 20),
       seed=st.integers(0, 2**16))
def test_records_match_containerd(out: bytes, err: bytes, out_reads: list[int], err_reads: list[int],
                                  extra: int, seed: int) -> None:
    """Whatever conmon's reads were, however the streams interleave and the copier's reads cut
    them, each stream's records are containerd's for its bytes. Lines are cut at `max_line`, never
    shorter than conmon's reads (16 KiB against 8 KiB for real)."""
    max_line = max(out_reads + err_reads) + extra
    stdout = list(conmon_records(b"stdout", out, out_reads))
    stderr = list(conmon_records(b"stderr", err, err_reads))
    rng = random.Random(seed)
    streams = assemble(_interleave(stdout, stderr, rng), max_line, rng)
    assert streams[b"stdout"] == containerd_records(out, max_line)
    assert streams[b"stderr"] == containerd_records(err, max_line)


def _interleave(a: list[bytes], b: list[bytes], rng: random.Random) -> list[bytes]:
    """The streams in a random order against each other, each in its own order."""
    out: list[bytes] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and rng.random() < 0.5):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


def test_foreign_records_are_skipped() -> None:
    assembler = crilog.LineAssembler()
    out: list[bytes] = []
    for record in (b"garbage", b"", b"t stdout X text", b"t stdout F kept"):
        assembler.feed(record, out)
    assert out == [b"t stdout F kept\n"]


# ---- real containers under conmon -----------------------------------------------------------------

LONG_SHAPES = [40960, 16384, 16385, 50000, 8192, 0, 3]


def records(path: str) -> list[tuple[str, str, int, bytes]]:
    """(stream, tag, length, text) per record of a CRI log; a record still being written is left out
    (as kubelet's reader waits for its newline)."""
    out = []
    *lines, _unfinished = Path(path).read_bytes().split(b"\n")
    for line in lines:
        _, stream, tag, text = line.split(b" ", 3)
        out.append((stream.decode(), tag.decode(), len(text), text))
    return out


@pytest.mark.root
async def test_long_lines_as_containerd_writes_them(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    script = "; ".join(f"head -c {n} /dev/zero | tr '\\0' x; echo" for n in LONG_SHAPES)
    script += "; printf 'crlf\\r\\n'; printf 'to-err\\n' >&2; printf 'no newline at the end'"
    # As kubelet names them: a 63-character container name, and so log path.
    c = await mgr.create(pod.sandbox, spec("long-lines-" + "x" * 52, script), IMAGE)
    await mgr.start(c.id)

    async def exited() -> bool:
        return (await mgr.status(c.id)).state == ContainerState.EXITED

    await wait_until(exited, what="the container to exit")
    # kubelet reads the log's end as soon as it sees the exit: all of it is there by then.
    got = [(s, t, n) for s, t, n, _ in records(c.log_path)]
    expected: list[tuple[str, str, int]] = []
    for n in LONG_SHAPES:
        expected += [("stdout", tag.decode(), len(text))
                     for tag, text in containerd_records(b"x" * n + b"\n", MAX)]
    expected += [("stdout", "F", 4)]
    assert [r for r in got if r[0] == "stdout"] == [*expected, ("stdout", "P", 21)]
    assert [r for r in got if r[0] == "stderr"] == [("stderr", "F", 6)]
    assert expected[:3] == [("stdout", "P", MAX), ("stdout", "P", MAX), ("stdout", "F", 8192)]
    assert all(n <= MAX for _, _, n in got)
    stdout, stderr = read_cri_log(c.log_path, 1 << 20)
    assert stdout == b"".join(b"x" * n + b"\n" for n in LONG_SHAPES) + b"crlf\nno newline at the end"
    assert stderr == b"to-err\n"
    # conmon's own file is the copier's, beside the bundle, and goes with the container.
    assert await asyncio.to_thread((Path(c.dir) / crilog.CONMON_FILE).exists)
    await mgr.remove(c.id)
    await mgr.settle()
    assert not await asyncio.to_thread(Path(c.dir).exists)


@pytest.mark.root
async def test_conmon_file_rotates_and_nothing_is_lost(env: Env, pod: Pod) -> None:
    """5 MiB of conmon records: its file is renamed aside and reopened several times while the
    container writes, so it never holds much; every line arrives once, in order."""
    mgr = env.manager()
    await mgr.recover()
    lines = 40000
    gate = Path(pod.sandbox.spec.log_directory).parent / "gate"
    gate.mkdir()
    script = f"seq -w 1 {lines} | sed 's/$/{'.' * 80}/'; until [ -e /gate/open ]; do sleep 0.02; done"
    c = await mgr.create(pod.sandbox, spec("chatty", script, mounts=[Mount("/gate", str(gate))]), IMAGE)
    await mgr.start(c.id)
    expected = [b"%05d%s" % (i, b"." * 80) for i in range(1, lines + 1)]
    await wait_until(lambda: [r[3] for r in records(c.log_path)] == expected, within=30,
                     what="every line in the CRI log")
    current, rotated = (Path(c.dir) / name for name in (crilog.CONMON_FILE, crilog.ROTATED_FILE))
    # conmon is alive: it follows every rotation asked of it (the last one may still be under way).
    await wait_until(lambda: not rotated.exists() and current.exists()
                     and current.stat().st_size < crilog.ROTATE_AFTER + crilog.READ_CHUNK,
                     what="conmon's file to be small")
    (gate / "open").touch()

    async def exited() -> bool:
        return (await mgr.status(c.id)).state == ContainerState.EXITED

    await wait_until(exited, what="the container to exit")
    assert [r[3] for r in records(c.log_path)] == expected


@pytest.mark.root
async def test_copy_goes_on_after_a_restart(env: Env, pod: Pod) -> None:
    """What a container writes while no crishim runs waits in conmon's file; the next crishim copies
    it from where the last one stopped: every line once, in order."""
    first = env.manager()
    await first.recover()
    gate = Path(pod.sandbox.spec.log_directory).parent / "gate"
    gate.mkdir()
    script = ("i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); "
              "if [ $i = 1000 ]; then until [ -e /gate/open ]; do sleep 0.02; done; fi; done")
    c = await first.create(pod.sandbox, spec("steady", script, mounts=[Mount("/gate", str(gate))]), IMAGE)
    await first.start(c.id)
    await wait_until(lambda: b"line-999\n" in Path(c.log_path).read_bytes(), what="the first lines")
    await first.close()
    (gate / "open").touch()
    conmon_file = Path(c.dir) / crilog.CONMON_FILE
    await wait_until(lambda: b"line-2999\n" in conmon_file.read_bytes(),
                     what="output written with no crishim running")

    second = env.manager()
    await second.recover()

    async def exited() -> bool:
        return (await second.status(c.id)).state == ContainerState.EXITED

    await wait_until(exited, what="the container to exit")
    texts = [text for _, _, _, text in records(c.log_path)]
    assert texts == [b"line-%d" % i for i in range(3000)]


@pytest.mark.root
async def test_reopen_refused_when_the_log_dir_is_gone(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    c = await mgr.create(pod.sandbox, spec("gone", "while :; do echo tick; sleep 0.05; done"), IMAGE)
    await mgr.start(c.id)
    log_dir = Path(c.log_path).parent
    for entry in log_dir.iterdir():
        entry.unlink()
    log_dir.rmdir()
    with pytest.raises(FailedPrecondition, match="cannot reopen its log"):
        await mgr.reopen_log(c.id)
    log_dir.mkdir()
    await mgr.reopen_log(c.id)
    await wait_until(lambda: b"tick" in Path(c.log_path).read_bytes(), what="ticks in the new log")


@pytest.mark.root
async def test_log_path_that_cannot_be_opened_fails_cleanly(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    log_dir = Path(pod.sandbox.spec.log_directory)
    await asyncio.to_thread((log_dir / "taken" / "0.log").mkdir, parents=True)  # a directory, not a file
    with pytest.raises(FailedPrecondition, match=r"cannot open its log .*config\.log_path.*directory"):
        await mgr.create(pod.sandbox, spec("taken", "true"), IMAGE)
    assert mgr.list_containers() == []
    await mgr.settle()
    assert await asyncio.to_thread(lambda: list(env.state.iterdir())) == []


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CrishimServer]:
    with host_server(tmp_path / "crishim") as s:
        yield s


@pytest.mark.root
def test_kill9_loses_no_line(server: CrishimServer, busybox_image: str, tmp_path: Path) -> None:
    """crishim killed while a container writes, the container ending before crishim is back: the log
    holds every line, in order (a line may repeat where the killed copy stopped, none is lost)."""
    pull(server, busybox_image)
    gate = tmp_path / "gate"
    gate.mkdir()
    config = pod_config("kill9-logs", host_network=True, log_directory=str(tmp_path / "logs"))
    pod_id = server.runtime().RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id
    container = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="writer"), image=api_pb2.ImageSpec(image=busybox_image),
        command=["sh", "-c", "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); if [ $i = 5000 ]; "
                             "then until [ -e /gate/open ]; do sleep 0.02; done; fi; done"],
        mounts=[api_pb2.Mount(container_path="/gate", host_path=str(gate))], log_path="writer/0.log")
    cid = create(server, (pod_id, config), container)
    start(server, cid)
    log_path = tmp_path / "logs" / "writer" / "0.log"
    poll(lambda: log_path.exists() and b"line-4999\n" in log_path.read_bytes(), what="the first lines")
    server.kill9()
    (gate / "open").touch()
    container_dir = server.state_dir / "containers" / cid
    poll(lambda: (container_dir / "exit").exists(), timeout=30,
         what="the container to end while crishim is down")
    server.start()

    def exited() -> bool:
        return bool(server.runtime().ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=cid)).status.state == api_pb2.CONTAINER_EXITED)

    poll(exited, what="the container to be reported exited")
    numbers = [int(text.removeprefix(b"line-")) for _, _, _, text in records(str(log_path))]
    assert sorted(set(numbers)) == list(range(20000))
    assert numbers == sorted(numbers)
    stop_and_remove(server, pod_id)
