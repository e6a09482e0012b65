"""What one sync of the pod must do, decided from the runtime's view of it (pure: no CRI, no clock).

The snapshot types hold what kubelet's GetPodStatus gathers (sandboxes and container statuses, newest
first); `compute_pod_actions` is kubelet's computePodActions; `Backoff` is client-go's flowcontrol.Backoff
as kubelet uses it for CrashLoopBackOff.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from crishim.kubelet.manifest import Container, Pod

RUNNING, EXITED, CREATED, UNKNOWN = "running", "exited", "created", "unknown"


@dataclass(frozen=True)
class SandboxSnapshot:
    id: str
    ready: bool
    attempt: int
    created_at: int
    ip: str = ""
    host_network: bool = False


@dataclass(frozen=True)
class ContainerSnapshot:
    id: str
    name: str
    state: str
    restart_count: int
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    sandbox_id: str = ""


@dataclass(frozen=True)
class PodSnapshot:
    """kubecontainer.PodStatus: both lists newest first (sorted by created_at)."""

    sandboxes: Sequence[SandboxSnapshot] = ()
    containers: Sequence[ContainerSnapshot] = ()

    def latest(self, name: str) -> ContainerSnapshot | None:
        """FindContainerStatusByName: the newest instance of the container."""
        return next((c for c in self.containers if c.name == name), None)

    def latest_exited(self, name: str) -> ContainerSnapshot | None:
        return next((c for c in self.containers if c.name == name and c.state == EXITED), None)


@dataclass
class PodActions:
    """kuberuntime_manager.go podActions."""

    kill_pod: bool = False
    create_sandbox: bool = False
    sandbox_id: str = ""
    attempt: int = 0
    next_init: Container | None = None
    to_start: list[Container] = field(default_factory=list)
    to_kill: dict[str, tuple[Container, str, str]] = field(default_factory=dict)  # id -> (spec, reason, msg)


def _sandbox_changed(pod: Pod, status: PodSnapshot) -> tuple[bool, int, str]:
    """kuberuntime_manager.go podSandboxChanged: (create a new one, its attempt, current sandbox id)."""
    if not status.sandboxes:
        return True, 0, ""
    latest = status.sandboxes[0]
    ready = sum(1 for s in status.sandboxes if s.ready)
    if ready > 1 or not latest.ready or latest.host_network != pod.host_network:
        return True, latest.attempt + 1, latest.id
    if not pod.host_network and not latest.ip:
        return True, latest.attempt + 1, latest.id
    return False, latest.attempt, latest.id


def should_restart(container: Container, pod: Pod, status: PodSnapshot) -> bool:
    """pkg/kubelet/container/helpers.go ShouldContainerBeRestarted."""
    latest = status.latest(container.name)
    if latest is None or latest.state in (UNKNOWN, CREATED):
        return True
    if latest.state == RUNNING or pod.restart_policy == "Never":
        return False
    return not (pod.restart_policy == "OnFailure" and latest.exit_code == 0)


def _init_failed(c: ContainerSnapshot) -> bool:
    """kuberuntime_container.go isInitContainerFailed."""
    return (c.state == EXITED and c.exit_code != 0) or c.state == UNKNOWN


def next_init_container(pod: Pod,
                        status: PodSnapshot) -> tuple[ContainerSnapshot | None, Container | None, bool]:
    """kuberuntime_container.go findNextInitContainerToRun: (failed status, next to run, all done)."""
    if not pod.init_containers:
        return None, None, True
    if any((s := status.latest(c.name)) is not None and s.state == RUNNING for c in pod.containers):
        return None, None, True
    for spec in reversed(pod.init_containers):
        s = status.latest(spec.name)
        if s is not None and _init_failed(s):
            return s, spec, False
    for i in range(len(pod.init_containers) - 1, -1, -1):
        s = status.latest(pod.init_containers[i].name)
        if s is None:
            continue
        if s.state == RUNNING:
            return None, None, False
        if s.state == EXITED:
            if i == len(pod.init_containers) - 1:
                return None, None, True
            return None, pod.init_containers[i + 1], False
    return None, pod.init_containers[0], False


def _succeeded(container: Container, status: PodSnapshot) -> bool:
    latest = status.latest(container.name)
    return latest is not None and latest.state == EXITED and latest.exit_code == 0


def compute_pod_actions(pod: Pod, status: PodSnapshot, liveness_failed: Collection[str] = (),
                        startup_failed: Collection[str] = ()) -> PodActions:
    """pkg/kubelet/kuberuntime/kuberuntime_manager.go computePodActions (no ephemeral or sidecar
    containers, no in-place resize). `*_failed` hold the ids of containers whose probe result is Failure."""
    create, attempt, sandbox_id = _sandbox_changed(pod, status)
    actions = PodActions(kill_pod=create, create_sandbox=create, sandbox_id=sandbox_id, attempt=attempt)
    restart_on_failure = pod.restart_policy != "Never"
    if create:
        if not restart_on_failure and attempt != 0 and status.containers:
            actions.create_sandbox = False  # the pod already ran to completion: never a second sandbox
            return actions
        to_start = [c for c in pod.containers
                    if not (pod.restart_policy == "OnFailure" and _succeeded(c, status))]
        if not to_start and next_init_container(pod, status)[2]:
            actions.create_sandbox = False
            return actions
        if pod.init_containers:
            actions.next_init = pod.init_containers[0]
        else:
            actions.to_start = to_start
        return actions

    last_init, next_init, done = next_init_container(pod, status)
    if not done:
        if next_init is not None:
            if last_init is not None and _init_failed(last_init) and not restart_on_failure:
                actions.kill_pod = True
            else:
                if last_init is not None and last_init.state == UNKNOWN:
                    actions.to_kill[last_init.id] = (next_init, "Unknown", "unknown state")
                actions.next_init = next_init
        return actions

    keep = 0
    for container in pod.containers:
        latest = status.latest(container.name)
        if latest is None or latest.state != RUNNING:
            if should_restart(container, pod, status):
                actions.to_start.append(container)
                if latest is not None and latest.state == UNKNOWN:
                    actions.to_kill[latest.id] = (container, "Unknown", "unknown state")
            continue
        if latest.id in liveness_failed:
            reason, message = "LivenessProbe", f"Container {container.name} failed liveness probe"
        elif latest.id in startup_failed:
            reason, message = "StartupProbe", f"Container {container.name} failed startup probe"
        else:
            keep += 1
            continue
        if restart_on_failure:
            message += ", will be restarted"
            actions.to_start.append(container)
        actions.to_kill[latest.id] = (container, reason, message)
    if keep == 0 and not actions.to_start:
        actions.kill_pod = True
    return actions


def pod_phase(pod: Pod, status: PodSnapshot) -> str:
    """pkg/kubelet/kubelet_pods.go getPhase, for the status lines."""
    failed_init, _, init_done = next_init_container(pod, status)
    if not init_done:
        return "Failed" if failed_init is not None and pod.restart_policy == "Never" else "Pending"
    latest = [status.latest(c.name) for c in pod.containers]
    if any(s is None or s.state in (CREATED, UNKNOWN) for s in latest):
        return "Pending"
    if any(s is not None and s.state == RUNNING for s in latest):
        return "Running"
    codes = [s.exit_code for s in latest if s is not None]
    if pod.restart_policy == "Always":
        return "Running"
    if all(code == 0 for code in codes):
        return "Succeeded"
    return "Failed" if pod.restart_policy == "Never" else "Running"


@dataclass
class _Entry:
    backoff: float
    last_update: float


class Backoff:
    """k8s.io/client-go/util/flowcontrol/backoff.go as kubelet builds it (kubelet.go: 10 s doubling to
    300 s, no jitter): delays grow per key while failures keep coming, and reset after 2x the cap of calm.

    Times are seconds on any monotonic clock; `now` is passed in so the logic stays testable.
    """

    def __init__(self, initial: float = 10.0, maximum: float = 300.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._entries: dict[str, _Entry] = {}

    def _expired(self, event_time: float, entry: _Entry) -> bool:
        return event_time - entry.last_update > self.maximum * 2

    def next(self, key: str, event_time: float, now: float) -> None:
        entry = self._entries.get(key)
        if entry is None or self._expired(event_time, entry):
            self._entries[key] = _Entry(self.initial, now)
        else:
            entry.backoff = min(entry.backoff * 2, self.maximum)
            entry.last_update = now

    def current(self, key: str) -> float:
        """The delay `key` is held to now (0 if it has none)."""
        entry = self._entries.get(key)
        return entry.backoff if entry else 0.0

    def in_backoff_since(self, key: str, event_time: float, now: float) -> float:
        """Seconds left before `key` may be retried after a failure at `event_time` (0: go ahead)."""
        entry = self._entries.get(key)
        if entry is None or self._expired(event_time, entry):
            return 0.0
        return max(0.0, entry.backoff - (now - event_time))
