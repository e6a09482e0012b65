"""Plugin protocol, chaining, cache and failure handling, with small fake plugins.

Fakes are used only for what real plugins cannot do on demand: record exactly what they were
given, fail with an error JSON, hang, crash, print garbage, or be missing.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import cni.cache
import cni.invoke
from cni import (
    CNIConfig,
    CNIError,
    NetworkConfigList,
    PluginCall,
    RuntimeConf,
    find_in_path,
    parse_network_config_list,
)
from tests.harness import poll

FakeBin = Callable[[str, str], str]

RESULT = (
    '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],'
    '"ips":[{"address":"10.9.0.5/24","gateway":"10.9.0.1","interface":0}]}'
)


def recorder(log: Path, result: str = RESULT) -> str:
    """A plugin that records argv-less inputs (env, stdin) in call order and answers ADD."""
    return f"""
    n=$(ls {log} | wc -l); n=$(printf %03d "$n")
    name=$(basename "$0")
    cat > {log}/$n-$CNI_COMMAND-$name.stdin
    env > {log}/$n-$CNI_COMMAND-$name.env
    [ "$CNI_COMMAND" = ADD ] && echo '{result}'
    exit 0
    """


class Calls:
    """The calls recorded by :func:`recorder`."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def all(self) -> list[tuple[str, str, dict[str, Any], dict[str, str]]]:
        out = []
        for stdin in sorted(self.log.glob("*.stdin")):
            _, verb, name = stdin.stem.split("-", 2)
            env = dict(
                line.split("=", 1)
                for line in stdin.with_suffix(".env").read_text().splitlines()
                if "=" in line
            )
            out.append((verb, name, json.loads(stdin.read_text()), env))
        return out

    def order(self) -> list[str]:
        return [f"{verb} {name}" for verb, name, _, _ in self.all()]


@pytest.fixture
def calls(tmp_path: Path) -> Calls:
    log = tmp_path / "log"
    log.mkdir()
    return Calls(log)


def make_net(version: str, *plugins: dict[str, object], **top: object) -> NetworkConfigList:
    doc = {"cniVersion": version, "name": "fake", "plugins": list(plugins), **top}
    return parse_network_config_list(json.dumps(doc).encode())


def rt(**kw: object) -> RuntimeConf:
    base: dict[str, object] = {"container_id": "c1", "netns": "/run/netns/x", "ifname": "eth0"}
    base.update(kw)
    return RuntimeConf(**base)  # type: ignore[arg-type]


def chain(fake_bin: FakeBin, calls: Calls, *names: str) -> str:
    bindir = ""
    for name in names:
        bindir = fake_bin(name, recorder(calls.log))
    return bindir


async def test_add_chains_prev_result_env_and_runtime_config(
    fake_bin: FakeBin, calls: Calls, tmp_path: Path
) -> None:
    bindir = chain(fake_bin, calls, "first", "second")
    net = make_net(
        "0.4.0",
        {"type": "first", "x-keep": [1, 2], "capabilities": {"portMappings": True}},
        {"type": "second", "name": "ignored", "cniVersion": "9.9.9"},
    )
    pms = [
        {"hostPort": 8080, "containerPort": 80, "protocol": "TCP"},
        {"hostPort": 0, "containerPort": 81, "protocol": "tcp"},
    ]
    seen: list[PluginCall] = []
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path / "cache"), observer=seen.append)
    os.environ["CRISHIM_TEST_INHERITED"] = "yes"
    try:
        result = await cfg.add_network_list(
            net,
            rt(
                args=(("IgnoreUnknown", "1"), ("K8S_POD_NAME", "p")),
                capability_args={"portMappings": pms, "bandwidth": {"ingressRate": 1}},
            ),
        )
    finally:
        del os.environ["CRISHIM_TEST_INHERITED"]
    assert str(result.ips_of_interface("eth0")[0].address) == "10.9.0.5/24"
    (v1, n1, in1, env1), (v2, n2, in2, _) = calls.all()
    assert (v1, n1, v2, n2) == ("ADD", "first", "ADD", "second")
    assert in1["x-keep"] == [1, 2] and in1["name"] == "fake" and in1["cniVersion"] == "0.4.0"
    assert in1["runtimeConfig"] == {"portMappings": [{**pms[0], "protocol": "tcp"}]}
    assert "prevResult" not in in1
    assert (in2["name"], in2["cniVersion"]) == ("fake", "0.4.0")
    assert "runtimeConfig" not in in2
    assert in2["prevResult"]["cniVersion"] == "0.4.0"  # converted to the list's version
    assert in2["prevResult"]["ips"][0]["version"] == "4"
    assert env1["CNI_COMMAND"] == "ADD" and env1["CNI_CONTAINERID"] == "c1"
    assert env1["CNI_NETNS"] == "/run/netns/x" and env1["CNI_IFNAME"] == "eth0"
    assert env1["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=p" and env1["CNI_PATH"] == bindir
    assert env1["CRISHIM_TEST_INHERITED"] == "yes"
    assert [(c.verb, c.plugin_type, c.network, c.error) for c in seen] == [
        ("ADD", "first", "fake", None),
        ("ADD", "second", "fake", None),
    ]
    cache_file = tmp_path / "cache" / "results" / "fake-c1-eth0"
    doc = json.loads(cache_file.read_text())
    assert doc["kind"] == "cniCacheV1" and doc["networkName"] == "fake"
    assert base64.b64decode(doc["config"]) == net.raw_bytes
    assert doc["cniArgs"] == [["IgnoreUnknown", "1"], ["K8S_POD_NAME", "p"]]
    assert doc["result"]["cniVersion"] == "0.4.0"
    assert oct(cache_file.stat().st_mode & 0o777) == "0o600"
    cached = cfg.get_cached_result("fake", rt())
    assert cached is not None and cached.ips == result.ips
    cached_net, cached_rt = cfg.get_network_list_cached_config("fake", rt())
    assert cached_net is not None and cached_net.raw_bytes == net.raw_bytes
    assert cached_rt.capability_args["portMappings"] == pms
    assert [a.container_id for a in cfg.get_cached_attachments("c1")] == ["c1"]
    assert cfg.get_cached_attachments("other") == []


async def test_del_reverse_with_cached_prev_result_and_args(
    fake_bin: FakeBin, calls: Calls, tmp_path: Path
) -> None:
    bindir = chain(fake_bin, calls, "first", "second")
    net = make_net("1.0.0", {"type": "first", "capabilities": {"portMappings": True}}, {"type": "second"})
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path))
    caps = {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "udp"}]}
    await cfg.add_network_list(net, rt(args=(("A", "1"),), capability_args=caps))
    await cfg.del_network_list(net, rt(netns=""))  # fresh args are replaced by the cached ones
    dels = [c for c in calls.all() if c[0] == "DEL"]
    assert [name for _, name, _, _ in dels] == ["second", "first"]
    assert all(stdin["prevResult"]["ips"][0]["address"] == "10.9.0.5/24" for _, _, stdin, _ in dels)
    assert dels[1][2]["runtimeConfig"] == caps and dels[1][3]["CNI_ARGS"] == "A=1"
    assert dels[1][3]["CNI_NETNS"] == ""
    assert not (tmp_path / "results" / "fake-c1-eth0").exists()
    await cfg.del_network_list(net, rt())  # repeated DEL: no cache, no prevResult, still fine
    assert "prevResult" not in calls.all()[-1][2]


async def test_cache_durability_handed_to_the_caller(
    fake_bin: FakeBin, calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `cache_synced_by`, ADD skips its own fsyncs and names the file the caller must make durable."""
    bindir = chain(fake_bin, calls, "first")
    net = make_net("1.0.0", {"type": "first"})
    handed: list[str] = []
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path), cache_synced_by=handed.append)
    fsynced: list[int] = []
    monkeypatch.setattr(cni.cache.os, "fsync", fsynced.append)
    await cfg.add_network_list(net, rt())
    assert handed == [str(tmp_path / "results" / "fake-c1-eth0")] and fsynced == []
    assert cfg.get_cached_result("fake", rt()) is not None
    await CNIConfig([bindir], cache_dir=str(tmp_path)).add_network_list(net, rt())
    assert len(fsynced) == 2  # by default: the file, then its directory


@pytest.mark.parametrize("content", [b"", b"{garbage", b'{"kind":"cniCacheV1","config":"!!"}'])
async def test_corrupt_cache_is_removed_and_del_goes_on(
    fake_bin: FakeBin, calls: Calls, tmp_path: Path, content: bytes
) -> None:
    bindir = chain(fake_bin, calls, "only")
    net = make_net("1.0.0", {"type": "only"})
    results = tmp_path / "results"
    results.mkdir()
    (results / "fake-c1-eth0").write_bytes(content)
    await CNIConfig([bindir], cache_dir=str(tmp_path)).del_network_list(net, rt())
    assert calls.order() == ["DEL only"] and "prevResult" not in calls.all()[0][2]
    assert not (results / "fake-c1-eth0").exists()


async def test_del_runs_remaining_plugins_when_one_is_missing(
    fake_bin: FakeBin, calls: Calls, tmp_path: Path
) -> None:
    bindir = chain(fake_bin, calls, "first", "third")
    net = make_net("1.0.0", {"type": "first"}, {"type": "gone"}, {"type": "third"})
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path), rollback_failed_add=False)
    with pytest.raises(CNIError, match='failed to find plugin "gone"'):
        await cfg.add_network_list(net, rt())
    (tmp_path / "results").mkdir(exist_ok=True)
    (tmp_path / "results" / "fake-c1-eth0").write_text(
        json.dumps(
            {
                "kind": "cniCacheV1",
                "networkName": "fake",
                "containerId": "c1",
                "ifName": "eth0",
                "config": "",
                "result": json.loads(RESULT),
            }
        )
    )
    with pytest.raises(CNIError) as exc:
        await cfg.del_network_list(net, rt())
    assert exc.value.plugin_type == "gone" and exc.value.verb == "DEL"
    assert calls.order() == ["ADD first", "DEL third", "DEL first"]
    assert (tmp_path / "results" / "fake-c1-eth0").exists()  # kept until a DEL fully succeeds


async def test_failed_add_is_rolled_back(fake_bin: FakeBin, calls: Calls, tmp_path: Path) -> None:
    bindir = chain(fake_bin, calls, "first")
    fake_bin("bad", 'cat >/dev/null; echo \'{"code":7,"msg":"bad config","details":"x=1"}\'; exit 1')
    net = make_net("1.0.0", {"type": "first"}, {"type": "bad"})
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path))
    with pytest.raises(CNIError) as exc:
        await cfg.add_network_list(net, rt())
    err = exc.value
    assert (err.code, err.msg, err.details, err.plugin_type, err.verb) == (
        7,
        "bad config",
        "x=1",
        "bad",
        "ADD",
    )
    assert str(err) == 'plugin type="bad" name="fake" failed (add): bad config: x=1'
    assert calls.order() == ["ADD first", "DEL first"]
    assert "rollback DEL" in str(err.__notes__)  # the fake "bad" also fails its DEL
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").iterdir())


async def test_try_again_code_is_retried(fake_bin: FakeBin, calls: Calls, tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    bindir = fake_bin(
        "flaky",
        f"""
        cat >/dev/null
        [ "$CNI_COMMAND" = DEL ] && exit 0
        if [ ! -e {marker} ]; then touch {marker}; echo '{{"code":11,"msg":"busy"}}'; exit 1; fi
        echo '{RESULT}'
        """,
    )
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path), try_again_delay=0)
    result = await cfg.add_network_list(make_net("1.0.0", {"type": "flaky"}), rt())
    assert result.ips


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("echo 'panic: boom' >&2; exit 2", 'netplugin failed: "panic: boom": exit status 2'),
        ("exit 3", "netplugin failed with no error message: exit status 3"),
        ("echo 'not json'; exit 1", "error parsing its diagnostic message"),
        ("kill -9 $$", "killed by signal SIGKILL"),
    ],
)
async def test_crashes_and_garbage_are_reported(
    fake_bin: FakeBin, tmp_path: Path, body: str, expected: str
) -> None:
    bindir = fake_bin("broken", "cat >/dev/null\n" + body)
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path), rollback_failed_add=False)
    with pytest.raises(CNIError, match=expected) as exc:
        await cfg.add_network_list(make_net("1.0.0", {"type": "broken"}), rt())
    assert exc.value.code == 999


async def test_garbage_result_on_success(fake_bin: FakeBin, tmp_path: Path) -> None:
    bindir = fake_bin("liar", "cat >/dev/null; echo '<html>'")
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path), rollback_failed_add=False)
    with pytest.raises(CNIError, match="printed an invalid result") as exc:
        await cfg.add_network_list(make_net("1.0.0", {"type": "liar"}), rt())
    assert exc.value.code == 6 and exc.value.plugin_type == "liar"


def _alive(pid: str) -> bool:
    """Running and not a zombie waiting for its reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_hanging_plugin_is_killed_with_its_children(fake_bin: FakeBin, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    bindir = fake_bin("hang", f"sleep 1000 & echo $$ $! > {pids}; wait")
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path), rollback_failed_add=False)
    # The limit leaves a busy machine time to start the shell and its child before the kill.
    with pytest.raises(CNIError, match=r"timed out after 2s"):
        await cfg.add_network_list(make_net("1.0.0", {"type": "hang"}), rt(), timeout=2.0)
    assert len(pids.read_text().split()) == 2
    # SIGKILL is delivered, and the orphan reaped, asynchronously: wait for every one to be gone.
    poll(lambda: not [pid for pid in pids.read_text().split() if _alive(pid)],
         what="the plugin and its child to die")


async def test_text_file_busy_is_retried_then_reported(
    fake_bin: FakeBin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cni.invoke, "TEXT_BUSY_DELAY", 0.01)
    bindir = fake_bin("busy", "exit 0")
    seen: list[PluginCall] = []
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path), observer=seen.append)
    writer = os.open(os.path.join(bindir, "busy"), os.O_WRONLY)  # exec now fails with ETXTBSY
    try:
        with pytest.raises(CNIError, match="Text file busy"):
            await cfg.del_network_list(make_net("1.0.0", {"type": "busy"}), rt())
    finally:
        os.close(writer)
    await cfg.del_network_list(make_net("1.0.0", {"type": "busy"}), rt())
    assert [c.error is None for c in seen] == [False, True]


async def test_version_gates_and_disable_flags(fake_bin: FakeBin, calls: Calls, tmp_path: Path) -> None:
    bindir = chain(fake_bin, calls, "p")
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path))
    with pytest.raises(CNIError, match="does not support the CHECK command") as exc:
        await cfg.check_network_list(make_net("0.3.1", {"type": "p"}), rt())
    assert exc.value.code == 1
    await cfg.check_network_list(make_net("1.0.0", {"type": "p"}, disableCheck=True), rt())
    await cfg.get_status_network_list(make_net("1.0.0", {"type": "p"}))
    await cfg.gc_network_list(make_net("1.1.0", {"type": "p"}, disableGC=True), [])
    assert calls.all() == []
    with pytest.raises(CNIError, match="CHECK needs a successful ADD first"):
        await cfg.check_network_list(make_net("1.0.0", {"type": "p"}), rt())
    await cfg.get_status_network_list(make_net("1.1.0", {"type": "p"}))
    verb, _, stdin, env = calls.all()[0]
    assert verb == "STATUS" and env["CNI_PATH"] == bindir and "runtimeConfig" not in stdin


async def test_status_not_ready(fake_bin: FakeBin, tmp_path: Path) -> None:
    bindir = fake_bin("sick", 'cat >/dev/null; echo \'{"code":50,"msg":"daemon down"}\'; exit 1')
    with pytest.raises(CNIError, match="daemon down") as exc:
        await CNIConfig([bindir]).get_status_network_list(make_net("1.1.0", {"type": "sick"}))
    assert exc.value.code == 50 and exc.value.verb == "STATUS"


async def test_gc_dels_stale_attachments_then_sends_gc(
    fake_bin: FakeBin, calls: Calls, tmp_path: Path
) -> None:
    bindir = chain(fake_bin, calls, "p")
    net = make_net("1.1.0", {"type": "p"})
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path))
    await cfg.add_network_list(net, rt(container_id="keep"))
    await cfg.add_network_list(net, rt(container_id="stale", args=(("S", "1"),)))
    await cfg.gc_network_list(net, [("keep", "eth0")])
    verbs = [(v, env.get("CNI_CONTAINERID")) for v, _, _, env in calls.all()]
    assert verbs[2:] == [("DEL", "stale"), ("GC", "")]
    gc_stdin = calls.all()[-1][2]
    assert gc_stdin["cni.dev/valid-attachments"] == [{"containerID": "keep", "ifname": "eth0"}]
    assert calls.all()[2][3]["CNI_ARGS"] == "S=1"
    assert [a.container_id for a in cfg.get_cached_attachments()] == ["keep"]


async def test_version_info(fake_bin: FakeBin, tmp_path: Path) -> None:
    new = fake_bin(
        "new", 'cat >/dev/null; echo \'{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0"]}\''
    )
    fake_bin("old", 'echo \'{"code":4,"msg":"unknown CNI_COMMAND: VERSION"}\'; exit 1')
    cfg = CNIConfig([new])
    info = await cfg.get_version_info("new")
    assert info.supports("1.0.0") and not info.supports("1.1.0")
    assert (await cfg.get_version_info("old")).supported_versions == ("0.1.0",)


def test_find_in_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "bridge").mkdir(parents=True)  # a directory is not a plugin
    b.mkdir()
    (b / "bridge").write_text("")  # no exec bit needed to be found
    assert find_in_path("bridge", [str(a), str(b)]) == str(b / "bridge")
    with pytest.raises(CNIError, match=rf'failed to find plugin "x" in path \[{a} {b}\]'):
        find_in_path("x", [str(a), str(b)])
    with pytest.raises(CNIError, match="invalid plugin name"):
        find_in_path("../x", [str(a)])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"container_id": ""}, "missing container ID"),
        ({"container_id": "-bad"}, "invalid container ID"),
        ({"ifname": "a" * 16}, "invalid interface name"),
        ({"ifname": "eth 0"}, "invalid interface name"),
        ({"netns": ""}, "missing network namespace"),
        ({"args": (("K", "a;b"),)}, "invalid CNI_ARGS"),
    ],
)
async def test_runtime_conf_validated_before_exec(
    tmp_path: Path, kw: dict[str, object], message: str
) -> None:
    cfg = CNIConfig([str(tmp_path)], cache_dir=str(tmp_path))
    with pytest.raises(CNIError, match=message):
        await cfg.add_network_list(make_net("1.0.0", {"type": "none"}), rt(**kw))


async def test_gc_takes_the_valid_set_from_a_callable(
    fake_bin: FakeBin, calls: Calls, tmp_path: Path
) -> None:
    bindir = chain(fake_bin, calls, "p")
    net = make_net("1.0.0", {"type": "p"})
    cfg = CNIConfig([bindir], cache_dir=str(tmp_path))
    await cfg.add_network_list(net, rt(container_id="kept"))
    await cfg.add_network_list(net, rt(container_id="gone"))
    asked: list[bool] = []

    def valid() -> list[tuple[str, str]]:
        asked.append(True)
        return [("kept", "eth0")]

    await cfg.gc_network_list(net, valid)
    assert asked == [True]
    assert [a.container_id for a in cfg.get_cached_attachments()] == ["kept"]
