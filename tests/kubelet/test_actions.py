"""computePodActions, getPhase, CrashLoopBackOff and the CRI log reader, without a runtime."""

from __future__ import annotations

from typing import Any

import pytest

from crishim.kubelet.actions import (
    CREATED,
    EXITED,
    RUNNING,
    Backoff,
    ContainerSnapshot,
    PodSnapshot,
    SandboxSnapshot,
    compute_pod_actions,
    pod_phase,
)
from crishim.kubelet.commands import parse_cri_log
from crishim.kubelet.manifest import Pod, parse_pod

READY = SandboxSnapshot(id="s1", ready=True, attempt=0, created_at=1, ip="10.99.0.2")


def make(restart: str = "Always", init: int = 0, apps: int = 2, **spec: Any) -> Pod:
    return parse_pod({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "restartPolicy": restart,
        "initContainers": [{"name": f"init{i}", "image": "x"} for i in range(init)],
        "containers": [{"name": f"app{i}", "image": "x"} for i in range(apps)], **spec}})


def c(name: str, state: str, exit_code: int = 0, created: int = 10, restarts: int = 0) -> ContainerSnapshot:
    return ContainerSnapshot(id=f"{name}-{created}", name=name, state=state, restart_count=restarts,
                             created_at=created, exit_code=exit_code)


def snapshot(*containers: ContainerSnapshot, sandbox: SandboxSnapshot | None = READY) -> PodSnapshot:
    ordered = sorted(containers, key=lambda x: x.created_at, reverse=True)
    return PodSnapshot(sandboxes=(sandbox,) if sandbox else (), containers=tuple(ordered))


def names(containers: list[Any]) -> list[str]:
    return [x.name for x in containers]


def test_new_pod_creates_a_sandbox_and_starts_everything() -> None:
    actions = compute_pod_actions(make(), snapshot(sandbox=None))
    assert (actions.create_sandbox, actions.kill_pod, actions.attempt) == (True, True, 0)
    assert names(actions.to_start) == ["app0", "app1"]


def test_init_containers_run_one_at_a_time() -> None:
    pod = make(init=2)
    first = compute_pod_actions(pod, snapshot(sandbox=None))
    assert first.next_init is not None and first.next_init.name == "init0" and not first.to_start
    running = compute_pod_actions(pod, snapshot(c("init0", RUNNING)))
    assert running.next_init is None and not running.to_start and not running.kill_pod
    second = compute_pod_actions(pod, snapshot(c("init0", EXITED)))
    assert second.next_init is not None and second.next_init.name == "init1"
    done = compute_pod_actions(pod, snapshot(c("init0", EXITED), c("init1", EXITED, created=11)))
    assert done.next_init is None and names(done.to_start) == ["app0", "app1"]


@pytest.mark.parametrize(("restart", "kill", "retry"), [("Always", False, True), ("OnFailure", False, True),
                                                        ("Never", True, False)])
def test_failed_init_container(restart: str, kill: bool, retry: bool) -> None:
    actions = compute_pod_actions(make(restart, init=1), snapshot(c("init0", EXITED, exit_code=1)))
    assert actions.kill_pod is kill
    assert (actions.next_init is not None) is retry


@pytest.mark.parametrize(("restart", "exit_code", "restarted"), [
    ("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False), ("OnFailure", 1, True),
    ("Never", 1, False)])
def test_exited_app_container(restart: str, exit_code: int, restarted: bool) -> None:
    actions = compute_pod_actions(make(restart, apps=2),
                                  snapshot(c("app0", EXITED, exit_code=exit_code), c("app1", RUNNING)))
    assert names(actions.to_start) == (["app0"] if restarted else [])
    assert not actions.kill_pod  # app1 still runs


def test_everything_done_kills_the_pod_and_never_recreates_it() -> None:
    pod = make("Never", apps=1)
    assert compute_pod_actions(pod, snapshot(c("app0", EXITED))).kill_pod
    stopped = SandboxSnapshot(id="s1", ready=False, attempt=0, created_at=1)
    actions = compute_pod_actions(pod, snapshot(c("app0", EXITED), sandbox=stopped))
    assert actions.kill_pod and not actions.create_sandbox
    succeeded = compute_pod_actions(make("OnFailure", apps=1), snapshot(c("app0", EXITED), sandbox=stopped))
    assert not succeeded.create_sandbox


def test_dead_sandbox_is_replaced_with_the_next_attempt() -> None:
    dead = SandboxSnapshot(id="s1", ready=False, attempt=3, created_at=1, ip="10.99.0.2")
    actions = compute_pod_actions(make(), snapshot(c("app0", EXITED), sandbox=dead))
    assert (actions.kill_pod, actions.create_sandbox) == (True, True)
    assert (actions.attempt, actions.sandbox_id) == (4, "s1")
    no_ip = SandboxSnapshot(id="s1", ready=True, attempt=0, created_at=1)
    assert compute_pod_actions(make(), snapshot(sandbox=no_ip)).create_sandbox
    on_node = SandboxSnapshot(id="s1", ready=True, attempt=0, created_at=1, host_network=True)
    assert not compute_pod_actions(make(hostNetwork=True), snapshot(sandbox=on_node)).create_sandbox


def test_liveness_failure_kills_and_restarts_per_policy() -> None:
    status = snapshot(c("app0", RUNNING), c("app1", RUNNING))
    actions = compute_pod_actions(make(), status, liveness_failed={"app0-10"})
    assert list(actions.to_kill) == ["app0-10"] and names(actions.to_start) == ["app0"]
    assert actions.to_kill["app0-10"][1:] == ("LivenessProbe",
                                              "Container app0 failed liveness probe, will be restarted")
    never = compute_pod_actions(make("Never", apps=1), snapshot(c("app0", RUNNING)),
                                startup_failed={"app0-10"})
    assert list(never.to_kill) == ["app0-10"] and not never.to_start and never.kill_pod


def test_created_but_not_started_is_retried() -> None:
    actions = compute_pod_actions(make("Never", apps=1), snapshot(c("app0", CREATED)))
    assert names(actions.to_start) == ["app0"]


@pytest.mark.parametrize(("restart", "states", "phase"), [
    ("Always", [(RUNNING, 0), (EXITED, 1)], "Running"),
    ("Always", [(EXITED, 0), (EXITED, 1)], "Running"),
    ("Never", [(EXITED, 0), (EXITED, 0)], "Succeeded"),
    ("Never", [(EXITED, 0), (EXITED, 2)], "Failed"),
    ("OnFailure", [(EXITED, 0), (EXITED, 2)], "Running"),
    ("OnFailure", [(EXITED, 0), (CREATED, 0)], "Pending")])
def test_phase(restart: str, states: list[tuple[str, int]], phase: str) -> None:
    status = snapshot(*(c(f"app{i}", s, exit_code=e, created=10 + i) for i, (s, e) in enumerate(states)))
    assert pod_phase(make(restart), status) == phase


def test_phase_while_initialising() -> None:
    assert pod_phase(make(init=1), snapshot(c("init0", RUNNING))) == "Pending"
    assert pod_phase(make("Never", init=1), snapshot(c("init0", EXITED, exit_code=1))) == "Failed"


def test_backoff_doubles_to_the_cap_and_resets_after_calm() -> None:
    """kubelet: no wait for the first restart, then 10 s, 20 s, ... up to 300 s after each finish."""
    backoff, key = Backoff(10, 300), "pod_ns_uid_app"
    now = 1000.0
    waits = []
    for _ in range(8):
        finished = now
        left = backoff.in_backoff_since(key, finished, now)
        waits.append(left)
        now += left
        assert backoff.in_backoff_since(key, finished, now) == 0
        backoff.next(key, finished, now)
        now += 1  # the container runs for a second and fails again
    assert waits == [0, 10, 20, 40, 80, 160, 300, 300]
    # 2 x the cap without a failure: the next failure starts over.
    later = now + 601
    assert backoff.in_backoff_since(key, later, later) == 0
    backoff.next(key, later, later)
    assert backoff.in_backoff_since(key, later + 1, later + 1) == 10


def test_cri_log_reader() -> None:
    data = (b"2026-01-01T00:00:00.000000001Z stdout F hello\n"
            b"2026-01-01T00:00:00.000000002Z stderr P par\n"
            b"2026-01-01T00:00:00.000000003Z stderr F tial\n"
            b"2026-01-01T00:00:00.000000004Z stdout F \n"
            b"garbage\n")
    assert parse_cri_log(data) == b"hello\npartial\n\n"
    assert parse_cri_log(data, timestamps=True).splitlines()[1] == b"2026-01-01T00:00:00.000000002Z partial"
