"""`crishim pod` against a real crishim server in a test node: what kubelet would observe."""

from __future__ import annotations

import copy
import gzip
import itertools
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from crishim.api.runtime.v1 import api_pb2
from tests.harness import REPO, poll
from tests.image_fixtures import HTTP_GET, TestImages
from tests.kubelet.podrun import Kubelet
from tests.kubelet.recorder import RecordingProxy

pytestmark = pytest.mark.root

EXAMPLE = REPO / "examples" / "two-containers.yaml"


def with_image(manifest: dict[str, Any], image: str) -> dict[str, Any]:
    manifest = copy.deepcopy(manifest)
    for key in ("initContainers", "containers"):
        for container in manifest["spec"].get(key, []):
            container["image"] = image
    return manifest


def pod(name: str, image: str, *containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return with_image({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"containers": list(containers), **spec}}, image)


def test_example_pod_runs_and_deletes_cleanly(kubelet: Kubelet, test_images: TestImages) -> None:
    manifest = with_image(yaml.safe_load(EXAMPLE.read_text()), test_images.busybox.ref)
    runner = kubelet.run(kubelet.write(manifest))
    uid = kubelet.uid(runner)
    runner.wait_for(r"pod Running, 2/2 ready", timeout=30)

    # The init container ran first, to completion, and its output reached the app containers.
    log_dir = kubelet.log_root / f"default_two-containers_{uid}"
    assert sorted(p.relative_to(log_dir).as_posix() for p in log_dir.rglob("*.log")) == [
        "client/0.log", "setup/0.log", "web/0.log"]
    poll(lambda: "hello from two-containers" in kubelet.logs("two-containers", "-c", "client"),
         what="the client to fetch the page over localhost")
    assert "hello from two-containers" in (log_dir / "client" / "0.log").read_text()
    assert kubelet.logs("two-containers", "-c", "setup") == ""

    # The CRI objects carry kubelet's labels and annotations.
    (sandbox,) = kubelet.sandboxes(uid)
    assert sandbox.metadata.attempt == 0 and sandbox.state == api_pb2.SANDBOX_READY
    assert sandbox.labels == {"app": "demo", "io.kubernetes.pod.name": "two-containers",
                              "io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": uid}
    assert sandbox.annotations["kubernetes.io/config.source"] == "file"
    web = kubelet.running(uid, "web")
    assert web is not None
    status = kubelet.container_status(web.id)
    assert status.log_path == str(log_dir / "web" / "0.log")
    assert status.labels["io.kubernetes.container.name"] == "web"
    assert status.annotations["io.kubernetes.container.restartCount"] == "0"
    assert status.annotations["io.kubernetes.pod.terminationGracePeriod"] == "5"
    assert json.loads(status.annotations["io.kubernetes.container.ports"]) == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"}]

    report = kubelet.status("two-containers")
    assert report["phase"] == "Running" and report["ready"] == "2/2" and report["runner_pid"]
    setup = report["containers"]["setup"]
    assert (setup["state"], setup["exit_code"]) == ("exited", 0)

    deleted = kubelet.command("delete", "two-containers", "--timeout", "30")
    assert "deleted" in deleted.stdout
    assert runner.wait_exit() == 0
    runner.wait_for("client: .*FailedPreStopHook|deleted")
    assert "FailedPreStopHook" not in runner.output()
    kubelet.assert_gone(uid, "two-containers")


def started_at(runner: Any, container: str) -> list[tuple[int, float]]:
    """(restart count, when the runner said so) for every start of `container`."""
    pattern = rf" {container}: started \S+ \(restart (\d+)\)"
    return [(int(m.group(1)), at) for at, m in runner.matching(pattern)]


def test_crash_loop_restarts_with_backoff(kubelet: Kubelet, test_images: TestImages) -> None:
    runner = kubelet.run(pod("crashy", test_images.busybox.ref,
                             {"name": "crash", "image": "", "command": ["sh", "-c", "echo attempt; exit 3"]}))
    uid = kubelet.uid(runner)
    runner.wait_for(r"crash: started \S+ \(restart 4\)", timeout=30)
    starts = started_at(runner, "crash")
    assert [n for n, _ in starts] == [0, 1, 2, 3, 4]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(starts)]
    # kubelet's back-off (base 1 s here): the first restart is immediate, then 1 s, 2 s, 4 s after the
    # previous instance finished; the 1 s relist adds at most a second.
    assert gaps[0] < 2.5, gaps
    for gap, backoff in zip(gaps[1:], (1, 2, 4), strict=True):
        assert backoff <= gap < backoff + 2.5, gaps
    assert runner.matching(r"crash: CrashLoopBackOff: back-off 4s")

    def current() -> api_pb2.ContainerStatus | None:
        newest = max(kubelet.containers(uid), key=lambda c: c.created_at)
        return kubelet.container_status(newest.id) if newest.metadata.attempt == 4 else None

    status = poll(current, what="the fifth instance")
    assert status.annotations["io.kubernetes.container.restartCount"] == "4"
    log_dir = kubelet.log_root / f"default_crashy_{uid}" / "crash"
    assert status.log_path == str(log_dir / "4.log")
    # Garbage collection keeps the newest dead instance (for --previous) and its log, nothing older.
    poll(lambda: sorted(c.metadata.attempt for c in kubelet.containers(uid)) in ([3, 4], [4, 5]),
         what="older instances to be collected")
    assert {p.name for p in log_dir.iterdir()} <= {"3.log", "4.log", "5.log"}
    # The loop goes on while we read: an instance may be collected between list and read, so retry.
    for args in ([], ["--previous"]):
        def read(args: list[str] = args) -> bool:
            return kubelet.command("logs", "crashy", *args, check=False).stdout == "attempt\n"

        poll(read, what=f"logs {args}")
    poll(lambda: kubelet.status("crashy")["containers"]["crash"]["restarts"] >= 4,
         what="pod status to report the restarts")

    runner.proc.send_signal(signal.SIGINT)  # Ctrl-C deletes the pod
    assert runner.wait_exit() == 0
    kubelet.assert_gone(uid, "crashy")


def test_probes_liveness_timeout_restarts_and_readiness_follows(kubelet: Kubelet,
                                                               test_images: TestImages) -> None:
    live = {"name": "live", "image": "", "command": ["sleep", "3600"],
            "livenessProbe": {"exec": {"command": ["sleep", "5"]}, "timeoutSeconds": 1, "periodSeconds": 1,
                              "failureThreshold": 2, "terminationGracePeriodSeconds": 1}}
    ready = {"name": "ready", "image": "", "command": ["sleep", "3600"],
             "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
             "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1,
                                "failureThreshold": 1}}
    scratch = {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}
    runner = kubelet.run(pod("probed", test_images.busybox.ref, live, ready, terminationGracePeriodSeconds=2,
                             volumes=[scratch]))
    uid = kubelet.uid(runner)
    runner.wait_for(r"pod Running, 1/2 ready")  # live has no readiness probe; ready's file is absent
    first = runner.wait_for(r"live: started (\S+) \(restart 0\)").group(1)

    # The exec probe times out twice in a row: liveness Failure, the container is killed and replaced.
    runner.wait_for(r"live: liveness probe Failure: command .* timed out", timeout=20)
    runner.wait_for(r"live: killing: Container live failed liveness probe, will be restarted")
    runner.wait_for(r"live: started \S+ \(restart 1\)", timeout=20)
    old = next(c for c in kubelet.containers(uid) if c.id.startswith(first))
    assert old.state == api_pb2.CONTAINER_EXITED
    # sleep is PID 1 and ignores TERM: KILL came after the probe's grace, raised to kubelet's 2 s minimum.
    old_status = kubelet.container_status(old.id)
    assert old_status.exit_code == 137
    assert (old_status.finished_at - old_status.started_at) / 1e9 >= 2

    # Readiness follows the probe both ways, and `pod status` reports it.
    target = kubelet.running(uid, "ready")
    assert target is not None
    assert kubelet.status("probed")["containers"]["ready"]["ready"] is False
    mounts = kubelet.exec(target.id, "cat", "/proc/mounts").stdout.decode().splitlines()
    assert any(m.split()[1:3] == ["/scratch", "tmpfs"] and "size=8192k" in m for m in mounts), mounts
    assert kubelet.exec(target.id, "touch", "/tmp/ready").exit_code == 0
    runner.wait_for(r"ready: readiness probe Success")
    poll(lambda: kubelet.status("probed")["containers"]["ready"]["ready"], what="ready in pod status")
    assert kubelet.exec(target.id, "rm", "/tmp/ready").exit_code == 0
    runner.wait_for(r"ready: readiness probe Failure")

    assert kubelet.command("delete", "probed", "--grace-period", "0").returncode == 0
    kubelet.assert_gone(uid, "probed")


def test_delete_respects_grace_when_term_is_ignored(kubelet: Kubelet, test_images: TestImages,
                                                    tmp_path: Path) -> None:
    events = tmp_path / "events-dir"  # created by the runner: hostPath type DirectoryOrCreate
    script = ('trap "echo got-TERM >> /host/events" TERM; echo started >> /host/events; '
              "while true; do sleep 0.2; done")
    stubborn = {"name": "stubborn", "image": "", "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "host", "mountPath": "/host"}],
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /host/events"]}}}}
    manifest = pod("stubborn", test_images.busybox.ref, stubborn, terminationGracePeriodSeconds=3,
                   volumes=[{"name": "host", "hostPath": {"path": str(events), "type": "DirectoryOrCreate"}}])
    runner = kubelet.run(manifest)
    uid = kubelet.uid(runner)
    runner.wait_for(r"stubborn: running")
    poll(lambda: (events / "events").exists(), what="the container to start")

    began = time.monotonic()
    kubelet.command("delete", "stubborn")
    took = time.monotonic() - began
    # TERM was delivered after the preStop hook, handled and ignored: only the grace period's end
    # (KILL) stopped the container.
    assert (events / "events").read_text() == "started\nprestop\ngot-TERM\n"
    assert 3 <= took < 8, took
    assert runner.wait_exit() == 0
    kubelet.assert_gone(uid, "stubborn")


def test_host_network_host_port_dns_and_shared_pid(kubelet: Kubelet, test_images: TestImages) -> None:
    serve = "mkdir -p /www && echo {} > /www/index.html && exec httpd -f -p {} -h /www"
    hostnet = pod("hostnet", test_images.busybox.ref,
                  {"name": "web", "image": "", "command": ["sh", "-c", serve.format("on-node", 18181)],
                   "ports": [{"containerPort": 18181}]},
                  hostNetwork=True, dnsPolicy="None",
                  dnsConfig={"nameservers": ["10.0.0.53"], "searches": ["kube.test"],
                             "options": [{"name": "ndots", "value": "2"}]})
    hook = {"postStart": {"exec": {"command": ["sh", "-c", "echo $POD_IP > /tmp/hook"]}}}
    shared = pod("shared", test_images.busybox.ref,
                 {"name": "web", "image": "", "command": ["sh", "-c", serve.format("in-pod", 80)],
                  "ports": [{"containerPort": 80, "hostPort": 18182}]},
                 {"name": "side", "image": "", "command": ["sleep", "3600"],
                  "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                  "lifecycle": hook},
                 hostname="front", subdomain="svc1", shareProcessNamespace=True)
    runners = {"hostnet": kubelet.run(hostnet), "shared": kubelet.run(shared)}
    uids = {name: kubelet.uid(r) for name, r in runners.items()}
    for runner in runners.values():
        runner.wait_for(r"pod Running, 2/2 ready|pod Running, 1/1 ready", timeout=30)

    def http(url: str) -> str:
        result = kubelet.node.sh(sys.executable, "-c", HTTP_GET, url, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    # hostNetwork: the node's port, the pod's own DNS (dnsPolicy None), the node's hosts file.
    poll(lambda: http("http://127.0.0.1:18181/") == "on-node", what="httpd on the node's port")
    web = kubelet.running(uids["hostnet"], "web")
    assert web is not None
    resolv = kubelet.exec(web.id, "cat", "/etc/resolv.conf").stdout.decode()
    assert "nameserver 10.0.0.53" in resolv and "search kube.test" in resolv and "ndots:2" in resolv
    hosts = kubelet.exec(web.id, "cat", "/etc/hosts").stdout.decode()
    assert hosts.startswith("# Kubernetes-managed hosts file (host network).")

    # A pod network pod: hostPort through portmap, hostname/subdomain in /etc/hosts, ClusterFirst
    # without a cluster DNS falls back to the node's resolv.conf, one PID namespace for both containers.
    side = kubelet.running(uids["shared"], "side")
    assert side is not None
    ip = kubelet.status("shared")["ip"]
    poll(lambda: http(f"http://{ip.rsplit('.', 1)[0]}.1:18182/") == "in-pod", what="the hostPort")
    assert kubelet.exec(side.id, "hostname").stdout == b"front\n"
    hosts = kubelet.exec(side.id, "cat", "/etc/hosts").stdout.decode()
    assert f"{ip}\tfront.svc1.default.svc.cluster.local\tfront" in hosts.splitlines()
    resolv = kubelet.exec(side.id, "cat", "/etc/resolv.conf").stdout.decode()
    assert "nameserver 10.1.2.3" in resolv and "search node.test" in resolv
    assert kubelet.exec(side.id, "cat", "/tmp/hook").stdout.decode() == f"{ip}\n"  # postStart, status.podIP
    processes = kubelet.exec(side.id, "ps", "-o", "args").stdout.decode()
    assert "httpd -f -p 80 -h /www" in processes and "sleep 3600" in processes

    for name, runner in runners.items():
        kubelet.command("delete", name, "--grace-period", "1")
        assert runner.wait_exit() == 0
    for name in runners:
        kubelet.assert_gone(uids[name], name)
    assert http("http://127.0.0.1:18181/") == ""


def test_delete_without_runner_uses_the_cri_labels(kubelet: Kubelet, test_images: TestImages,
                                                   tmp_path: Path) -> None:
    """A runner killed outright leaves its pod running; `delete` finds it by kubelet's labels and kills it
    with what the annotations kept: the preStop hook and the grace period."""
    events = tmp_path / "orphan-events"
    events.mkdir()
    script = "trap 'exit 0' TERM; while true; do sleep 0.2; done"
    app = {"name": "app", "image": "", "command": ["sh", "-c", script],
           "volumeMounts": [{"name": "host", "mountPath": "/host"}],
           "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /host/events"]}}}}
    volume = {"name": "host", "hostPath": {"path": str(events), "type": "Directory"}}
    runner = kubelet.run(pod("orphan", test_images.busybox.ref, app, terminationGracePeriodSeconds=7,
                             volumes=[volume]))
    uid = kubelet.uid(runner)
    runner.wait_for(r"app: running")
    runner.proc.kill()
    runner.wait_exit()
    assert [s.state for s in kubelet.sandboxes(uid)] == [api_pb2.SANDBOX_READY]

    began = time.monotonic()
    deleted = kubelet.command("delete", "orphan")
    assert time.monotonic() - began < 5  # the container handles TERM: no waiting for the 7 s grace
    assert "deleting (grace 7s)" in deleted.stdout  # io.kubernetes.pod.terminationGracePeriod
    assert (events / "events").read_text() == "prestop\n"  # io.kubernetes.container.preStopHandler
    kubelet.assert_gone(uid, "orphan")
    missing = kubelet.command("delete", "orphan", check=False)
    assert missing.returncode == 1 and "pod default/orphan not found" in missing.stderr


def test_startup_probe_holds_liveness_and_readiness(kubelet: Kubelet, test_images: TestImages) -> None:
    slow = {"name": "slow", "image": "", "command": ["sleep", "3600"],
            "startupProbe": {"exec": {"command": ["test", "-f", "/tmp/started"]}, "periodSeconds": 1,
                             "failureThreshold": 60},
            "livenessProbe": {"exec": {"command": ["test", "-f", "/tmp/alive"]}, "periodSeconds": 1,
                              "failureThreshold": 1}}
    runner = kubelet.run(pod("slow", test_images.busybox.ref, slow, terminationGracePeriodSeconds=2))
    uid = kubelet.uid(runner)
    runner.wait_for(r"slow: running, restarts 0$")
    container = kubelet.running(uid, "slow")
    assert container is not None
    started = kubelet.container_status(container.id).started_at / 1e9
    poll(lambda: time.time() - started >= 3, what="three startup probe periods")
    # Not started yet: the failing liveness probe is not run and the container is not ready.
    assert not runner.matching("liveness probe") and kubelet.running(uid, "slow") is not None
    assert kubelet.status("slow")["containers"]["slow"]["ready"] is False

    assert kubelet.exec(container.id, "touch", "/tmp/started").exit_code == 0
    runner.wait_for(r"slow: startup probe Success")
    runner.wait_for(r"slow: liveness probe Failure")
    runner.wait_for(r"slow: started \S+ \(restart 1\)")
    lines = runner.output().splitlines()
    assert lines.index(next(x for x in lines if "startup probe Success" in x)) < lines.index(
        next(x for x in lines if "liveness probe Failure" in x))

    runner.proc.send_signal(signal.SIGTERM)
    assert runner.wait_exit() == 0
    kubelet.assert_gone(uid, "slow")


MUTATING = {"RunPodSandbox", "PullImage", "CreateContainer", "StartContainer", "StopContainer",
            "StopPodSandbox", "RemoveContainer", "RemovePodSandbox"}


def test_requests_on_the_wire_follow_kubelet(kubelet: Kubelet, test_images: TestImages,
                                             tmp_path: Path) -> None:
    """Through a recording proxy: kubelet's order (createPodSandbox, then per container ImageStatus,
    ImageStatus for the user, CreateContainer, StartContainer; KillPod, then removal) and shapes."""
    proxy = RecordingProxy(tmp_path / "proxy.sock", kubelet.server.socket).start()
    script = "trap 'exit 0' TERM; while true; do sleep 0.2; done"
    app = {"name": "app", "image": "", "command": ["sh", "-c", script],
           "ports": [{"containerPort": 80, "hostPort": 18183}]}
    manifest = pod("wire", test_images.busybox.ref, app, terminationGracePeriodSeconds=3,
                   initContainers=[{"name": "init", "image": "", "command": ["true"]}])
    try:
        runner = kubelet.run(manifest, "--endpoint", f"unix://{proxy.socket}")
        uid = kubelet.uid(runner)
        runner.wait_for(r"pod Running, 1/1 ready")
        runner.proc.send_signal(signal.SIGTERM)
        assert runner.wait_exit() == 0
    finally:
        proxy.stop()
    kubelet.assert_gone(uid, "wire")

    methods = proxy.methods()
    assert [m for m in methods if m in MUTATING] == [
        "RunPodSandbox", "CreateContainer", "StartContainer", "CreateContainer", "StartContainer",
        "StopContainer", "StopPodSandbox", "RemoveContainer", "RemoveContainer", "StopPodSandbox",
        "RemovePodSandbox"]
    assert methods[:4] == ["Version", "ListPodSandbox", "ListContainers", "RunPodSandbox"]
    assert methods[4] == "PodSandboxStatus"
    for i, method in enumerate(methods):
        if method == "CreateContainer":
            assert methods[i - 2:i] == ["ImageStatus", "ImageStatus"] and methods[i + 1] == "StartContainer"

    selector = {"io.kubernetes.pod.uid": uid}
    assert all(dict(r.filter.label_selector) == selector for r in proxy.requests("ListPodSandbox"))
    assert all(dict(r.filter.label_selector) == selector for r in proxy.requests("ListContainers"))
    assert not any(r.verbose for r in proxy.requests("PodSandboxStatus"))
    (run,) = proxy.requests("RunPodSandbox")
    assert run.config.metadata.uid == uid and run.config.metadata.attempt == 0
    assert run.config.log_directory == str(kubelet.log_root / f"default_wire_{uid}")
    assert list(run.config.port_mappings) == [api_pb2.PortMapping(container_port=80, host_port=18183)]
    assert run.config.linux.cgroup_parent == f"{kubelet.cgroup_root}/kubepods/besteffort/pod{uid}"
    creates = proxy.requests("CreateContainer")
    assert [c.config.log_path for c in creates] == ["init/0.log", "app/0.log"]
    assert all(c.sandbox_config == run.config for c in creates)
    image_ref = creates[0].config.image.image
    assert image_ref.startswith("sha256:")
    assert creates[0].config.image.user_specified_image == test_images.busybox.ref
    assert [r.image.image for r in proxy.requests("ImageStatus")[:2]] == [test_images.busybox.ref, image_ref]
    (stop,) = proxy.requests("StopContainer")
    assert stop.timeout == 3


def test_log_rotation_keeps_long_lines_whole(kubelet: Kubelet, test_images: TestImages) -> None:
    """kubelet's log manager over `crishim pod`: 40 KB lines arrive as containerd writes them (16 KiB
    P records, the remainder in F); the log is rotated by size (renamed, ReopenContainerLog, older
    files gzipped, at most max-files kept) and no line is cut or lost across a rotation."""
    script = ("i=0; while :; do head -c 40000 /dev/zero | tr '\\0' a; echo \" $i\"; i=$((i+1)); "
              "sleep 0.2; done")
    runner = kubelet.run(pod("rotating", test_images.busybox.ref,
                             {"name": "writer", "image": "", "command": ["sh", "-c", script]}),
                         "--container-log-max-size", "100Ki", "--container-log-max-files", "3",
                         "--container-log-monitor-interval", "1")
    uid = kubelet.uid(runner)
    log_dir = kubelet.log_root / f"default_rotating_{uid}" / "writer"
    poll(lambda: len(list(log_dir.glob("0.log.*.gz"))) >= 1, timeout=30, what="a gzipped rotated log")

    def files() -> list[Path]:
        compressed = sorted(log_dir.glob("0.log.*.gz"))
        rotated = sorted(p for p in log_dir.glob("0.log.*") if p.suffix != ".gz")
        return [*compressed, *rotated, log_dir / "0.log"]

    def between_rotations() -> tuple[list[Path], bytes] | None:
        """The files and their records, read while no rotation ran: the older files gzipped, the
        newest rotated one plain (readers may still be on it), the live log."""
        found = files()
        if (len(found) < 3 or found[-2].suffix in (".gz", ".tmp")
                or any(p.suffix != ".gz" for p in found[:-2])):
            return None
        try:
            data = b"".join(gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
                            for p in found)
        except FileNotFoundError:
            return None
        return (found, data) if files() == found else None

    found, data = poll(between_rotations, what="the log files between two rotations")
    assert len(found) == 3  # --container-log-max-files counts the live log too
    *record_lines, _unfinished = data.split(b"\n")  # the live log's last record may be being written
    records = [line.split(b" ", 3) for line in record_lines]
    assert all(stream == b"stdout" and tag in (b"P", b"F") for _, stream, tag, _ in records)
    assert all(len(text) == 16384 for _, _, tag, text in records if tag == b"P")
    lines, current = [], b""
    for _, _, tag, text in records:
        current += text
        if tag == b"F":
            lines.append(current)
            current = b""
    # The oldest file kept may begin inside a line (its start went with a removed file).
    numbers = [int(line.removeprefix(b"a" * 40000)) for line in lines[1:]]  # every line whole
    assert numbers == sorted(numbers) and len(numbers) >= 5
    tags = b"".join(tag for _, _, tag, _ in records)
    assert tags.count(b"PPF") >= len(numbers)  # 16384 + 16384 + 7232 bytes and " N"
    runner.proc.send_signal(signal.SIGINT)
    assert runner.wait_exit() == 0
    kubelet.assert_gone(uid, "rotating")
