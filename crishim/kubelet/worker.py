"""The pod worker: keeps one pod in its desired state through the CRI, then deletes it gracefully.

Every relist period (1 s, kubelet's generic PLEG) or as soon as a probe fails, it reads the pod's status
(GetPodStatus), garbage-collects dead containers, computes the actions (computePodActions) and carries
them out with kubelet's request order (SyncPod). kubelet resyncs on PLEG events and every 10 s and
collects garbage every minute; one loop doing all of it each second gives the same outcome, sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from crishim.api.runtime.v1 import api_pb2
from crishim.kubelet import node as nodefs
from crishim.kubelet.actions import (
    EXITED,
    RUNNING,
    UNKNOWN,
    Backoff,
    ContainerSnapshot,
    PodSnapshot,
    compute_pod_actions,
    pod_phase,
)
from crishim.kubelet.cri import PULL_TIMEOUT, REQUEST_TIMEOUT, Cri, not_found
from crishim.kubelet.logrotate import LogPolicy, rotate_pod_logs
from crishim.kubelet.manifest import Container, Pod
from crishim.kubelet.prober import LIVENESS, READINESS, STARTUP, ProbeResults, ProbeWorker
from crishim.kubelet.requests import (
    ContainerConfigError,
    ImageUser,
    Node,
    container_config,
    container_mounts,
    pod_cgroup_parent,
    pod_log_dir,
    sandbox_config,
)

MIN_GRACE = 2  # kuberuntime_container.go minimumGracePeriodInSeconds


@dataclass
class WorkerOptions:
    node: Node
    backoff_base: float = 10.0  # kubelet.go backOffPeriod
    backoff_max: float = 300.0  # MaxContainerBackOff
    relist_period: float = 1.0  # pleg relistPeriod
    logs: LogPolicy = field(default_factory=LogPolicy)
    announce: Callable[[str], None] = print
    on_report: Callable[[dict[str, Any]], None] | None = None


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


class PodWorker:
    def __init__(self, pod: Pod, cri: Cri, options: WorkerOptions) -> None:
        self.pod, self.cri, self.opts = pod, cri, options
        self.node = options.node
        self.log_dir = pod_log_dir(pod, self.node.log_root)
        # kubelet's pod annotations as its file source sets them (pkg/kubelet/config/common.go)
        self.annotations = {**pod.annotations, "kubernetes.io/config.source": "file",
                            "kubernetes.io/config.seen": _rfc3339(time.time())}
        self.status = PodSnapshot()
        self.backoff = Backoff(options.backoff_base, options.backoff_max)
        self.pull_backoff = Backoff(options.backoff_base, options.backoff_max)
        self.results = ProbeResults()
        self.wake = asyncio.Event()
        self.sandbox_cfg: api_pb2.PodSandboxConfig | None = None
        self.volume_paths: dict[str, str] | None = None
        self.hosts_file = ""
        self.pod_ip = ""
        self.deletion_grace: int | None = None
        self._reported: dict[str, Any] = {}
        self._said: dict[str, str] = {}

    # ---- running -------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Sync until `stop` is set, then delete the pod; the deletion also runs if the loop fails."""
        probes = [asyncio.create_task(self._probe_worker(kind, c))
                  for c in self.pod.containers
                  for kind, probe in ((STARTUP, c.startup_probe), (LIVENESS, c.liveness_probe),
                                      (READINESS, c.readiness_probe)) if probe is not None]
        probes.append(asyncio.create_task(self._rotate_logs()))
        try:
            while not stop.is_set():
                try:
                    await self.sync()
                except grpc.aio.AioRpcError as exc:
                    self.say("sync", f"sync failed: {exc.code().name}: {exc.details()}")
                except OSError as exc:
                    self.say("sync", f"sync failed: {exc}")
                self.wake.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
                await asyncio.wait(waiters, timeout=self.opts.relist_period,
                                   return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            for task in probes:
                task.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
            await self.delete()

    async def _rotate_logs(self) -> None:
        """kubelet's container log manager, for this pod (see logrotate)."""
        while True:
            await asyncio.sleep(self.opts.logs.period)
            try:
                await rotate_pod_logs(self.cri, self.pod.uid, self.opts.logs)
            except grpc.aio.AioRpcError as exc:
                self.say("logs", f"log rotation failed: {exc.code().name}: {exc.details()}")
            except OSError as exc:
                self.say("logs", f"log rotation failed: {exc}")

    def _probe_worker(self, kind: str, container: Container) -> Any:
        probe = {STARTUP: container.startup_probe, LIVENESS: container.liveness_probe,
                 READINESS: container.readiness_probe}[kind]
        assert probe is not None
        return ProbeWorker(kind, self.pod, container, probe, self.cri, self.results, lambda: self.status,
                           self._probe_host, self._probe_changed).run()

    def _probe_host(self) -> str:
        """prober.go: the pod IP (the node's for hostNetwork pods, reached here on loopback)."""
        return "127.0.0.1" if self.pod.host_network else self.pod_ip

    def _probe_changed(self, kind: str, container: str, detail: str) -> None:
        if detail:
            self.announce(f"{container}: {kind} probe {detail}")
        if kind in (LIVENESS, STARTUP) and detail.startswith("Failure"):
            self.wake.set()
        self.report()

    def announce(self, line: str) -> None:
        self.opts.announce(f"{time.strftime('%H:%M:%S')} {self.pod.namespace}/{self.pod.name} {line}")

    def say(self, key: str, line: str) -> None:
        """announce, but only when it differs from what was last said about `key`."""
        if self._said.get(key) != line:
            self._said[key] = line
            self.announce(line)

    async def sync(self) -> None:
        """One pass of kuberuntime_manager.go SyncPod."""
        if self.volume_paths is None:  # kubelet mounts volumes before SyncPod (WaitForAttachAndMount)
            try:
                self.volume_paths = await asyncio.to_thread(nodefs.setup_volumes, self.pod, self.node)
            except (OSError, nodefs.VolumeError) as exc:
                self.say("volumes", f"FailedMount: {exc}")
                return
        status = await self.cri.pod_status(self.pod.uid)
        self.status = status
        self.report()
        await self.collect_garbage(status)
        actions = compute_pod_actions(self.pod, status, self.results.failed(LIVENESS),
                                      self.results.failed(STARTUP))
        if actions.kill_pod:
            if status.sandboxes:
                self.announce("killing pod" + (" to recreate its sandbox" if actions.create_sandbox else ""))
            await self.kill_pod(status)
            if not actions.create_sandbox:
                return
            for c in status.containers:  # purgeInitContainers
                if any(c.name == i.name for i in self.pod.init_containers):
                    await self.remove_container(c.id)
        else:
            for cid, (spec, reason, message) in actions.to_kill.items():
                self.announce(f"{spec.name}: killing: {message}")
                await self.kill_container(cid, spec, reason)
        sandbox_id = actions.sandbox_id
        if actions.create_sandbox:
            created = await self.create_sandbox(actions.attempt)
            if created is None:
                return
            sandbox_id = created
            status = PodSnapshot(sandboxes=(), containers=status.containers)
        elif self.sandbox_cfg is None:
            self.sandbox_cfg = sandbox_config(self.pod, actions.attempt, self.node, self.annotations)
            await self._sandbox_ready(sandbox_id)
        if actions.next_init is not None:
            await self.start_container(actions.next_init, sandbox_id, status)
        for container in actions.to_start:
            await self.start_container(container, sandbox_id, status)

    # ---- sandbox ------------------------------------------------------------------------------------

    async def _sandbox_ready(self, sandbox_id: str) -> None:
        """PodSandboxStatus(id, verbose=false) for the pod IPs (the node's for hostNetwork), which the
        containers' status.podIP and the managed /etc/hosts need."""
        status = (await self.cri.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=sandbox_id), timeout=REQUEST_TIMEOUT)).status
        ips = [ip for ip in (status.network.ip, *(a.ip for a in status.network.additional_ips)) if ip]
        if self.pod.host_network:
            ips = [self.node.node_ip or "127.0.0.1"]
        self.pod_ip = ips[0] if ips else ""
        self.hosts_file = await asyncio.to_thread(nodefs.write_hosts_file, self.pod, self.node, ips)

    async def create_sandbox(self, attempt: int) -> str | None:
        """kuberuntime_sandbox.go createPodSandbox: log dir, RunPodSandbox, then PodSandboxStatus."""
        config = sandbox_config(self.pod, attempt, self.node, self.annotations)
        await asyncio.to_thread(nodefs.make_log_dir, config.log_directory)
        try:
            response = await self.cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(
                config=config, runtime_handler=self.node.runtime_handler), timeout=REQUEST_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            self.say("sandbox", f"FailedCreatePodSandBox: {exc.code().name}: {exc.details()}")
            return None
        sandbox_id = str(response.pod_sandbox_id)
        self.sandbox_cfg = config
        await self._sandbox_ready(sandbox_id)
        self.announce(f"sandbox {sandbox_id[:13]} created (attempt {attempt})")
        return sandbox_id

    # ---- containers ---------------------------------------------------------------------------------

    def _backoff_key(self, container: Container) -> str:
        """kuberuntime_manager.go getStableKey: pod name, namespace, uid, container name (and hash)."""
        return f"{self.pod.name}_{self.pod.namespace}_{self.pod.uid}_{container.name}"

    def in_backoff(self, container: Container, status: PodSnapshot) -> bool:
        """kuberuntime_manager.go doBackOff: keyed on the latest exited instance's FinishedAt."""
        exited = status.latest_exited(container.name)
        if exited is None:
            return False
        key, finished, now = self._backoff_key(container), exited.finished_at / 1e9, time.time()
        left = self.backoff.in_backoff_since(key, finished, now)
        if left > 0:
            self.say(f"backoff/{container.name}", f"{container.name}: CrashLoopBackOff: back-off "
                     f"{self.backoff.current(key):g}s restarting failed container")
            return True
        self.backoff.next(key, finished, now)
        return False

    async def ensure_image(self, container: Container) -> str | None:
        """pkg/kubelet/images/image_manager.go EnsureImageExists: ImageStatus, then PullImage per policy
        (with the same back-off for failed pulls: ImagePullBackOff)."""
        spec = api_pb2.ImageSpec(image=container.image, user_specified_image=container.image)
        if container.image_pull_policy != "Always":
            found = (await self.cri.images.ImageStatus(api_pb2.ImageStatusRequest(image=spec),
                                                       timeout=REQUEST_TIMEOUT)).image
            if found.id:
                return str(found.id)
            if container.image_pull_policy == "Never":
                self.say(f"image/{container.name}", f"{container.name}: ErrImageNeverPull: {container.image} "
                         "is not present and imagePullPolicy is Never")
                return None
        key, now = container.image, time.time()
        if self.pull_backoff.in_backoff_since(key, now, now) > 0:
            self.say(f"image/{container.name}", f"{container.name}: ImagePullBackOff: {container.image}")
            return None
        try:
            response = await self.cri.images.PullImage(api_pb2.PullImageRequest(
                image=spec, sandbox_config=self.sandbox_cfg), timeout=PULL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            self.pull_backoff.next(key, now, now)
            self.say(f"image/{container.name}", f"{container.name}: ErrImagePull: {exc.details()}")
            return None
        self.announce(f"{container.name}: pulled {container.image}")
        return str(response.image_ref)

    async def image_user(self, image_ref: str) -> ImageUser:
        """kuberuntime_container.go getImageUser: ImageStatus's uid or username."""
        image = (await self.cri.images.ImageStatus(api_pb2.ImageStatusRequest(
            image=api_pb2.ImageSpec(image=image_ref)), timeout=REQUEST_TIMEOUT)).image
        return ImageUser(uid=image.uid.value if image.HasField("uid") else None, username=image.username)

    async def start_container(self, container: Container, sandbox_id: str, status: PodSnapshot) -> None:
        """kuberuntime_container.go startContainer (after SyncPod's doBackOff)."""
        if self.in_backoff(container, status):
            return
        image_ref = await self.ensure_image(container)
        if image_ref is None or self.sandbox_cfg is None or self.volume_paths is None:
            return
        latest = status.latest(container.name)
        restart = (latest.restart_count + 1 if latest is not None
                   else await asyncio.to_thread(nodefs.next_restart_from_logs, self.log_dir, container.name))
        await asyncio.to_thread(nodefs.make_log_dir, os.path.join(self.log_dir, container.name))
        termination = await asyncio.to_thread(nodefs.termination_file, self.pod, self.node, container.name)
        try:
            config = container_config(
                self.pod, container, restart_count=restart, image_ref=image_ref,
                image_user=await self.image_user(image_ref), node=self.node, pod_ip=self.pod_ip,
                mounts=container_mounts(container, self.volume_paths, self.hosts_file, termination))
        except ContainerConfigError as exc:
            self.say(f"config/{container.name}", f"{container.name}: CreateContainerConfigError: {exc}")
            return
        try:
            container_id = (await self.cri.runtime.CreateContainer(api_pb2.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=self.sandbox_cfg),
                timeout=REQUEST_TIMEOUT)).container_id
        except grpc.aio.AioRpcError as exc:
            self.say(f"create/{container.name}", f"{container.name}: CreateContainerError: {exc.details()}")
            return
        try:
            await self.cri.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id),
                                                  timeout=REQUEST_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            self.say(f"start/{container.name}", f"{container.name}: RunContainerError: {exc.details()}")
            return
        self.announce(f"{container.name}: started {container_id[:13]} (restart {restart})")
        if container.post_start is not None:
            failure = await self._hook(container_id, container.post_start.command, None)
            if failure:
                self.announce(f"{container.name}: FailedPostStartHook: {failure}")
                await self.kill_container(container_id, container, "FailedPostStartHook")

    async def _hook(self, container_id: str, command: tuple[str, ...], deadline: float | None) -> str:
        """pkg/kubelet/lifecycle/handlers.go Run (exec): ExecSync with no timeout of its own; '' = success."""
        try:
            response = await self.cri.runtime.ExecSync(api_pb2.ExecSyncRequest(
                container_id=container_id, cmd=list(command), timeout=0),
                timeout=deadline if deadline is not None else REQUEST_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        if response.exit_code:
            output = (response.stdout + response.stderr).decode(errors="replace").strip()
            return f"command {list(command)!r} exited with {response.exit_code}: {output}"
        return ""

    async def kill_container(self, container_id: str, container: Container, reason: str = "") -> None:
        """kuberuntime_container.go killContainer: grace = deletion grace, else the liveness/startup probe's
        own, else the pod's; the preStop hook spends from it; StopContainer gets at least 2 s."""
        grace = self.pod.termination_grace_period_seconds
        probes = {"LivenessProbe": container.liveness_probe, "StartupProbe": container.startup_probe}
        probe = probes.get(reason)
        if self.deletion_grace is not None:
            grace = self.deletion_grace
        elif probe is not None and probe.termination_grace_period_seconds is not None:
            grace = probe.termination_grace_period_seconds
        if container.pre_stop is not None and grace > 0:
            started = time.monotonic()
            failure = await self._hook(container_id, container.pre_stop.command, grace)
            if failure:
                self.announce(f"{container.name}: FailedPreStopHook: {failure}")
            grace -= int(time.monotonic() - started)
        grace = max(grace, MIN_GRACE)
        with _unless_not_found():
            await self.cri.runtime.StopContainer(api_pb2.StopContainerRequest(
                container_id=container_id, timeout=grace), timeout=REQUEST_TIMEOUT + grace)

    async def kill_pod(self, status: PodSnapshot) -> None:
        """kuberuntime_manager.go killPodWithSyncResult: running containers in parallel, then StopPodSandbox
        for every sandbox of the pod."""
        running = [(c, self.pod.container(c.name)) for c in status.containers
                   if c.state in (RUNNING, UNKNOWN) and self._known(c.name)]
        results = await asyncio.gather(*(self.kill_container(c.id, spec) for c, spec in running),
                                       return_exceptions=True)
        for (c, _), result in zip(running, results, strict=True):
            if isinstance(result, BaseException):
                self.announce(f"{c.name}: StopContainer failed: {result}")
        for sandbox in status.sandboxes:
            with _unless_not_found():
                await self.cri.runtime.StopPodSandbox(
                    api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=REQUEST_TIMEOUT)

    def _known(self, name: str) -> bool:
        try:
            self.pod.container(name)
        except KeyError:
            return False
        return True

    async def remove_container(self, container_id: str) -> None:
        """kuberuntime_container.go removeContainer: the container's log files, then RemoveContainer."""
        with _unless_not_found():
            status = (await self.cri.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(
                container_id=container_id), timeout=REQUEST_TIMEOUT)).status
            if status.log_path:
                await asyncio.to_thread(_remove_logs, status.log_path)
            await self.cri.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id),
                                                   timeout=REQUEST_TIMEOUT)

    async def collect_garbage(self, status: PodSnapshot) -> None:
        """kuberuntime_gc.go for a live pod: keep the newest dead instance of each container
        (MaxPerPodContainer 1); remove old sandboxes that are not ready and hold no containers."""
        seen: set[str] = set()
        kept: list[ContainerSnapshot] = []
        for c in status.containers:
            if c.state == RUNNING:
                kept.append(c)
            elif c.name in seen:
                await self.remove_container(c.id)
            else:
                seen.add(c.name)
                kept.append(c)
        used = {c.sandbox_id for c in kept}
        for sandbox in status.sandboxes[1:]:
            if not sandbox.ready and sandbox.id not in used:
                await self.remove_sandbox(sandbox.id)

    async def remove_sandbox(self, sandbox_id: str) -> None:
        """kuberuntime_gc.go removeSandbox: StopPodSandbox, then RemovePodSandbox."""
        rt = self.cri.runtime
        with _unless_not_found():
            await rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                                    timeout=REQUEST_TIMEOUT)
        with _unless_not_found():
            await rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                                      timeout=REQUEST_TIMEOUT)

    # ---- deletion -----------------------------------------------------------------------------------

    async def delete(self) -> None:
        """A deleted pod: kill it with the deletion grace (preStop, StopContainer, StopPodSandbox), then what
        kubelet's GC and housekeeping do for a pod that is gone: every container (and its logs) and
        sandbox removed, the pod directory, log directory and pod cgroup deleted."""
        if self.deletion_grace is None:
            self.deletion_grace = self.pod.termination_grace_period_seconds
        self.announce(f"deleting (grace {self.deletion_grace}s)")
        status = await self.cri.pod_status(self.pod.uid)
        await self.kill_pod(status)
        status = await self.cri.pod_status(self.pod.uid)
        for c in status.containers:
            await self.remove_container(c.id)
        for sandbox in status.sandboxes:
            await self.remove_sandbox(sandbox.id)
        await asyncio.to_thread(nodefs.remove_pod_files, self.pod, self.node, self.log_dir)
        left = await asyncio.to_thread(nodefs.remove_pod_cgroup, pod_cgroup_parent(self.pod, self.node))
        if left:
            self.announce(f"pod cgroup not removed: {', '.join(left)}")
        self.status = PodSnapshot()
        self.announce("deleted")

    # ---- reporting ----------------------------------------------------------------------------------

    def container_report(self, spec: Container, latest: ContainerSnapshot | None) -> dict[str, Any]:
        if latest is None:
            return {"state": "waiting", "restarts": 0, "ready": False, "id": ""}
        report: dict[str, Any] = {"state": latest.state, "restarts": latest.restart_count, "id": latest.id,
                                  "ready": latest.state == RUNNING and self.results.ready(spec, latest.id)}
        if latest.state == EXITED:
            report["exit_code"] = latest.exit_code
            report["reason"] = latest.reason
        return report

    def report(self) -> None:
        """Status lines for what changed since the last report, and the on_report callback."""
        status = self.status
        containers = {c.name: self.container_report(c, status.latest(c.name))
                      for c in (*self.pod.init_containers, *self.pod.containers)}
        ready = sum(1 for c in self.pod.containers if containers[c.name]["ready"])
        summary: dict[str, Any] = {
            "phase": pod_phase(self.pod, status) if status.sandboxes else "Pending",
            "ready": f"{ready}/{len(self.pod.containers)}", "ip": self.pod_ip if status.sandboxes else "",
            "sandbox": status.sandboxes[0].id if status.sandboxes else "", "containers": containers}
        for name, now in containers.items():
            if self._reported.get("containers", {}).get(name) != now:
                extra = f", exit code {now['exit_code']}" if "exit_code" in now else ""
                ready_text = ", ready" if now["ready"] else ""
                self.announce(f"{name}: {now['state']}, restarts {now['restarts']}{extra}{ready_text}")
        if (self._reported.get("phase"), self._reported.get("ready")) != (summary["phase"], summary["ready"]):
            self.announce(f"pod {summary['phase']}, {summary['ready']} ready, ip {summary['ip'] or '-'}")
        self._reported = summary
        if self.opts.on_report is not None:
            self.opts.on_report(summary)


@contextlib.contextmanager
def _unless_not_found() -> Iterator[None]:
    """Stop and Remove are idempotent for kubelet: NotFound means done."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        if not not_found(exc):
            raise


def _remove_logs(log_path: str) -> None:
    """removeContainerLog: the log and its rotated siblings (<log>.<timestamp>[.gz])."""
    directory, base = os.path.split(log_path)
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name == base or name.startswith(base + "."):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(directory, name))
