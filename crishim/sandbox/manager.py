"""The pod sandbox lifecycle: RunPodSandbox, StopPodSandbox, RemovePodSandbox and start-up recovery.

Order of a Run (R-SBX-1): record CREATING (naming the netns path) beside the pinning of the network, IPC
and UTS namespaces → CNI ADD beside the pod files and /dev/shm (only containers use them) → sysctls →
READY. Everything after pinning is rolled back by a CNI DEL with its own deadline; the namespaces go only
once DEL worked (R-SBX-2), otherwise the record stays NOTREADY with the teardown owed.

Run, Stop and Remove each run as a task of their own that callers join: a client that gives up does not
interrupt them half-way (a CNI DEL killed in the middle leaves bridge's masquerade rules behind for good:
its retry no longer finds the interface whose address names them), and concurrent calls share one.

Where things live: the records (`<state_dir>/sandboxes.log`) must outlive a reboot; everything else of
a pod (pinned IPC/UTS namespaces, hostname, hosts, resolv.conf, /dev/shm) sits in `<run_dir>/sandboxes/<id>`
on a tmpfs, which crishim mounts itself where the host's run dir is not one: it is gone after a reboot like
the namespaces it holds, and creating files there costs a fraction of what it costs on a disk filesystem
(on ext4, inode allocation was a third of crishim's CPU per RunPodSandbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import cni
from crishim.config import Config
from crishim.errors import InvalidArgument, NetworkError, NotFound, Unavailable
from crishim.network import podnet
from crishim.network.manager import NetworkManager
from crishim.sandbox.files import MS_NODEV, MS_NOEXEC, MS_NOSUID, release_pod_files, write_pod_files
from crishim.sandbox.model import PluginTiming, Sandbox, SandboxSpec, SandboxState
from crishim.sandbox.namespaces import (
    PodNamespaces,
    apply_sysctls,
    each,
    is_pinned,
    mount,
    mounts_below,
    on_tmpfs,
    pin,
    release,
    unmount,
)
from crishim.sandbox.validate import USERNS_FIELD, validate_metadata, validate_spec
from crishim.store import RecordLog, Syncer
from crishim.threads import run_in_thread

log = logging.getLogger(__name__)

RECORD_LOG = "sandboxes.log"
POD_ROOT_TMPFS_OPTIONS = "mode=0711"
NETNS_PREFIX = "cni-"
TIMELINE_LIMIT = 64
REAPER_INTERVAL = 30.0

T = TypeVar("T")


class ContainerHooks(Protocol):
    """What the container manager does for a pod being stopped or removed."""

    async def stop_all(self, sandbox_id: str) -> None: ...

    async def remove_all(self, sandbox_id: str) -> None: ...

    def supports_userns(self, handler: str) -> bool:
        """Whether the runtime handler ("" for the default) runs pods in their own user namespace."""


class SandboxManager:
    def __init__(self, config: Config, network: NetworkManager, handlers: set[str],
                 syncer: Syncer) -> None:
        self.config = config
        self.network = network
        self.handlers = handlers
        self.records = RecordLog(Path(config.state_dir) / RECORD_LOG)
        self.pod_root = Path(config.run_dir) / "sandboxes"
        self.netns_dir = Path(config.netns_dir)
        self.containers: ContainerHooks | None = None
        self._sandboxes: dict[str, Sandbox] = {}
        self._by_key: dict[tuple[str, str, str, int], str] = {}
        self._inflight: dict[Hashable, asyncio.Task[Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._node_hostname = socket.gethostname()
        self.on_change: Callable[[Sandbox, str], None] | None = None
        self.syncer = syncer

    # ---- lookup -------------------------------------------------------------------------------

    def get(self, sandbox_id: str) -> Sandbox | None:
        """By full id or unique prefix."""
        found = self._sandboxes.get(sandbox_id)
        if found is not None or not sandbox_id:
            return found
        matches = [s for sid, s in self._sandboxes.items() if sid.startswith(sandbox_id)]
        return matches[0] if len(matches) == 1 else None

    def require(self, sandbox_id: str) -> Sandbox:
        found = self.get(sandbox_id)
        if found is None or found.state == SandboxState.CREATING:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return found

    def list(self) -> list[Sandbox]:
        return [s for s in self._sandboxes.values() if s.state != SandboxState.CREATING]

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _notify(self, sandbox: Sandbox, event: str) -> None:
        if self.on_change is not None:
            self.on_change(sandbox, event)

    def _joined(self, key: Hashable, make: Callable[[], Coroutine[Any, Any, T]]) -> Awaitable[T]:
        """`make()` as a task of its own, which every caller with the same `key` joins, shielded from
        the callers' cancellation."""
        task = self._inflight.get(key)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(make())
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._joined_done, key))
        return asyncio.shield(task)

    def _joined_done(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # every caller may have given up; the task logged what matters

    # ---- persistence --------------------------------------------------------------------------

    async def _persist(self, sandbox: Sandbox) -> None:
        """Append the record to the log at every state change; the syncer makes it durable soon after.

        A killed crishim finds every record (the page cache outlives it). A power cut can lose the last
        few; a reboot also drops every namespace, so recovery then sees pods whose netns is gone (teardown
        owed) and CNI GC releases attachments no record names.
        """
        del sandbox.timeline[:-TIMELINE_LIMIT]
        await self.records.put(sandbox.id, sandbox.to_json())
        self.syncer.mark(self.records.path)

    # ---- run ----------------------------------------------------------------------------------

    async def run(self, spec: SandboxSpec, config_blob: str) -> str:
        """Create the pod; a retry of the same (name, namespace, uid, attempt) gets the same id (R-SBX-3).

        Creation runs as its own task: a client that gives up (kubelet's 4-minute deadline) does not
        interrupt it half-way, and its retry picks up the result.
        """
        validate_spec(spec, self.handlers)
        if spec.own_userns is not None and not (
                self.containers is not None and self.containers.supports_userns(spec.runtime_handler)):
            raise InvalidArgument(f"{USERNS_FIELD}: mode POD is not supported by runtime handler "
                                  f"{spec.runtime_handler or 'default'!r} on this node (Status "
                                  "runtime_handlers features.user_namespaces is false)")
        key = ("run", spec.dedupe_key())
        existing = self._sandboxes.get(self._by_key.get(spec.dedupe_key(), ""))
        if key not in self._inflight and existing is not None and existing.state == SandboxState.READY:
            return existing.id
        return await self._joined(key, lambda: self._create(spec, config_blob))

    def _new_sandbox(self, spec: SandboxSpec, config_blob: str) -> Sandbox:
        sandbox_id = secrets.token_hex(32)
        pod_dir = self.pod_root / sandbox_id
        sandbox = Sandbox(id=sandbox_id, spec=spec, state=SandboxState.CREATING,
                          created_at=time.time_ns(), dir=str(pod_dir),
                          hostname=spec.hostname or self._node_hostname)
        spec.config_blob = config_blob
        if not spec.host_network:
            sandbox.netns_path = str(self.netns_dir / f"{NETNS_PREFIX}{uuid.uuid4()}")
            sandbox.uts_ns_path = str(pod_dir / "uts")
            net = self.network.network
            sandbox.network_name = net.name if net else ""
            sandbox.teardown_pending = True
        if not spec.host_ipc:
            sandbox.ipc_ns_path = str(pod_dir / "ipc")
        if spec.own_userns is not None:
            sandbox.user_ns_path = str(pod_dir / "user")
        return sandbox

    def namespaces(self, sandbox: Sandbox) -> PodNamespaces:
        userns = sandbox.spec.own_userns
        if userns is None or not sandbox.user_ns_path:
            return PodNamespaces(net=sandbox.netns_path, ipc=sandbox.ipc_ns_path, uts=sandbox.uts_ns_path)
        return PodNamespaces(net=sandbox.netns_path, ipc=sandbox.ipc_ns_path, uts=sandbox.uts_ns_path,
                             user=sandbox.user_ns_path, uid_map="".join(m.line() for m in userns.uids),
                             gid_map="".join(m.line() for m in userns.gids))

    def _attachment(self, sandbox: Sandbox, netns: str) -> podnet.Attachment:
        spec = sandbox.spec
        return podnet.Attachment(sandbox.id, netns, podnet.cni_args(spec, sandbox.id),
                                 podnet.capability_args(spec))

    def _teardown_attachment(self, sandbox: Sandbox, netns: str) -> podnet.Attachment:
        """The set-up's attachment, or, for a record older than today's checks whose arguments no plugin
        can be given, the sandbox id alone (all DEL needs): no request may make a pod immortal."""
        try:
            validate_metadata(sandbox.spec)
            return self._attachment(sandbox, netns)
        except InvalidArgument as exc:
            log.warning("tearing down without the pod's CNI arguments", extra={
                "sandbox": sandbox.id, "error": str(exc)})
            return podnet.Attachment(sandbox.id, netns, (), {})

    async def _create(self, spec: SandboxSpec, config_blob: str) -> str:
        if not spec.host_network:
            reason = self.network.not_ready_reason()
            if reason:
                raise Unavailable(f"network plugin is not ready: {reason}")
            podnet.capability_args(spec)  # rejects bad bandwidth annotations before anything exists
        sandbox = self._new_sandbox(spec, config_blob)
        async with self._lock(sandbox.id):
            self._sandboxes[sandbox.id] = sandbox
            self._by_key[spec.dedupe_key()] = sandbox.id
            try:
                await self._set_up(sandbox)
                sandbox.state = SandboxState.READY
                await self._persist(sandbox)
            except BaseException as exc:
                await asyncio.shield(self._roll_back(sandbox, exc))
                if isinstance(exc, cni.CNIError):
                    raise NetworkError(
                        f"failed to set up network for sandbox {sandbox.id}: {exc}") from exc
                raise
        log.info("sandbox ready", extra={"sandbox": sandbox.id, "pod": f"{spec.namespace}/{spec.name}",
                                         "ips": sandbox.ips})
        self._notify(sandbox, "started")
        return sandbox.id

    async def _pin_namespaces(self, sandbox: Sandbox) -> None:
        """Network, IPC and UTS namespaces from one unshare, on a throw-away thread that ends inside
        them (`lo` up, hostname set): adding IPC and UTS to the netns's unshare costs a fifth of
        pinning them on a thread of their own. With a user namespace of its own, a child process
        makes them all (namespaces.user_namespace_child)."""
        namespaces = self.namespaces(sandbox)
        if not namespaces.pinned():
            return
        started, clock = time.time(), time.perf_counter()
        await run_in_thread(lambda: pin(namespaces, sandbox.hostname))
        sandbox.timeline.append(PluginTiming(verb="PIN", plugin_type="namespaces", started=started,
                                             duration=time.perf_counter() - clock))

    async def _set_up(self, sandbox: Sandbox) -> None:
        """The CREATING record (naming the netns path) and the namespaces are made side by side, and
        both exist before ADD: a crash from ADD on is rolled back by the next start from the record,
        and a crash before it leaves at most namespaces no record names, which the start-up sweep
        removes. The pod files (only containers read them) are written while ADD runs."""
        await _settle(self._pin_namespaces(sandbox), self._persist(sandbox))  # the thread starts first
        await _settle(asyncio.to_thread(write_pod_files, sandbox),
                      self._add_network(sandbox))
        await apply_sysctls(self.namespaces(sandbox), sandbox.spec.sysctls)

    async def _add_network(self, sandbox: Sandbox) -> None:
        if sandbox.spec.host_network:
            return
        net, result = await self.network.set_up(
            self._attachment(sandbox, sandbox.netns_path), sandbox.timeline)
        sandbox.network_name = net.name
        sandbox.cni_result = result.raw
        sandbox.ips = pod_ips(result)

    async def _roll_back(self, sandbox: Sandbox, cause: BaseException) -> None:
        sandbox.last_error = str(cause) or type(cause).__name__
        try:
            await self._tear_down(sandbox)
        except Exception as exc:
            log.warning("rollback left the network in place; teardown is retried later",
                        extra={"sandbox": sandbox.id, "error": str(exc)})
            sandbox.state = SandboxState.NOTREADY
            await self._persist(sandbox)
            return
        await self._forget(sandbox)

    # ---- stop / remove ------------------------------------------------------------------------

    async def _tear_down(self, sandbox: Sandbox) -> None:
        """CNI DEL while the netns still exists (bridge needs it to undo its masquerade rules), then
        what the pod holds on this node; the namespaces stay until DEL has worked."""
        if sandbox.teardown_pending:
            netns = sandbox.netns_path if await asyncio.to_thread(is_pinned, sandbox.netns_path) else ""
            await self.network.tear_down(self._teardown_attachment(sandbox, netns), sandbox.network_name,
                                         sandbox.timeline)
            sandbox.teardown_pending = False
        await asyncio.to_thread(self._release_local, sandbox)

    def _release_local(self, sandbox: Sandbox) -> None:
        """Namespaces and /dev/shm, each tried whatever happened to the other; idempotent."""
        each((functools.partial(release, self.namespaces(sandbox)),
              functools.partial(release_pod_files, sandbox)))

    async def stop(self, sandbox_id: str) -> None:
        """Idempotent: an unknown or stopped pod succeeds; a failed DEL is returned and retried later.
        Runs to the end whatever the caller does; concurrent Stops of a pod share one teardown."""
        sandbox = self.get(sandbox_id)
        if sandbox is None:
            return
        await self._joined(("stop", sandbox.id), functools.partial(self._stop, sandbox))

    async def _stop(self, sandbox: Sandbox) -> None:
        async with self._lock(sandbox.id):
            await self._stop_locked(sandbox)

    async def _stop_locked(self, sandbox: Sandbox) -> None:
        if sandbox.id not in self._sandboxes:
            return
        if self.containers is not None:
            await self.containers.stop_all(sandbox.id)
        if sandbox.state == SandboxState.READY:
            # From here on the record says the teardown is owed: a crash in the middle of DEL is
            # finished by the next start (the netns, which DEL needs, stays until DEL has worked).
            sandbox.state = SandboxState.NOTREADY
            await self._persist(sandbox)
            self._notify(sandbox, "stopped")
        owed = sandbox.teardown_pending
        try:
            await self._tear_down(sandbox)
        except cni.CNIError as exc:
            sandbox.last_error = str(exc)
            await self._persist(sandbox)
            raise NetworkError(f"failed to destroy network for sandbox {sandbox.id}: {exc}") from exc
        if owed or sandbox.ips:
            sandbox.ips = []
            await self._persist(sandbox)

    async def remove(self, sandbox_id: str) -> None:
        """Stop, remove the pod's containers and every file of the pod; unknown ids succeed. Like Stop,
        it runs to the end whatever the caller does."""
        sandbox = self.get(sandbox_id)
        if sandbox is None:
            return
        await self._joined(("remove", sandbox.id), functools.partial(self._remove, sandbox))

    async def _remove(self, sandbox: Sandbox) -> None:
        async with self._lock(sandbox.id):
            if sandbox.id not in self._sandboxes:
                return
            await self._stop_locked(sandbox)
            if self.containers is not None:
                await self.containers.remove_all(sandbox.id)
            await self._forget(sandbox)
        self._locks.pop(sandbox.id, None)
        self._notify(sandbox, "deleted")

    async def _forget(self, sandbox: Sandbox) -> None:
        self._sandboxes.pop(sandbox.id, None)
        key = sandbox.spec.dedupe_key()
        if self._by_key.get(key) == sandbox.id:
            del self._by_key[key]
        await self.records.delete(sandbox.id)
        self.syncer.mark(self.records.path)
        await asyncio.to_thread(_remove_pod_dir, Path(sandbox.dir))

    # ---- start-up -----------------------------------------------------------------------------

    async def recover(self) -> None:
        """Reload every record, finish what a crash interrupted, and drop namespaces nobody owns."""
        await asyncio.to_thread(self._prepare_pod_root)
        records = _sandboxes_from(await self.records.open())
        for sandbox in records:
            self._sandboxes[sandbox.id] = sandbox
            if sandbox.state != SandboxState.CREATING:
                self._by_key[sandbox.spec.dedupe_key()] = sandbox.id
        await asyncio.to_thread(self._sweep_orphans)
        for sandbox in records:
            if sandbox.state == SandboxState.CREATING:
                await self._roll_back(sandbox, RuntimeError("crishim stopped while creating the pod"))
            elif sandbox.state == SandboxState.READY and not sandbox.spec.host_network and not (
                    await asyncio.to_thread(is_pinned, sandbox.netns_path)):
                sandbox.state = SandboxState.NOTREADY
                sandbox.last_error = f"network namespace {sandbox.netns_path} is gone"
                await self._persist(sandbox)
        log.info("recovered sandboxes", extra={"count": len(self._sandboxes)})
        self._spawn(self._collect_garbage_when_ready())
        self._spawn(self._reap_pending())

    def _prepare_pod_root(self) -> None:
        self.pod_root.mkdir(parents=True, exist_ok=True)
        if not on_tmpfs(str(self.pod_root)):
            mount("tmpfs", str(self.pod_root), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  POD_ROOT_TMPFS_OPTIONS)
            log.info("mounted a tmpfs for pod files", extra={"path": str(self.pod_root)})

    def _sweep_orphans(self) -> None:
        owned = {s.netns_path for s in self._sandboxes.values()}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.netns_dir):
                if entry.name.startswith(NETNS_PREFIX) and entry.path not in owned:
                    log.info("removing an orphaned network namespace", extra={"path": entry.path})
                    unmount(entry.path)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
        for entry in os.scandir(self.pod_root):
            if entry.name not in self._sandboxes:
                log.info("removing the files of an unknown pod", extra={"path": entry.path})
                _remove_pod_dir(Path(entry.path))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _collect_garbage_when_ready(self) -> None:
        """CNI GC once the network is loaded, with every pod that may still hold an attachment as valid."""
        await self.network.wait_loaded()
        try:
            await self.network.garbage_collect(
                lambda: [s.id for s in self._sandboxes.values()
                         if s.teardown_pending or s.state != SandboxState.NOTREADY])
        except cni.CNIError as exc:
            log.warning("CNI GC failed", extra={"error": str(exc)})

    async def _reap_pending(self) -> None:
        """Retry teardowns that failed (plugin down, binary missing) without waiting for kubelet."""
        while True:
            for sandbox in list(self._sandboxes.values()):
                if sandbox.state == SandboxState.NOTREADY and sandbox.teardown_pending:
                    try:
                        await self.stop(sandbox.id)
                    except Exception as exc:  # logged; tried again next round
                        log.warning("owed teardown failed again", extra={"sandbox": sandbox.id,
                                                                         "error": str(exc)})
            await asyncio.sleep(REAPER_INTERVAL)

    async def close(self) -> None:
        """Let Runs, Stops and Removes under way finish (a DEL cut short leaks rules for good); what is
        still running after the shutdown grace is left to the next start, as after a crash."""
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=self.config.shutdown_grace)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.records.close()


async def _settle(*steps: Awaitable[None]) -> None:
    """Run `steps` together and raise the first failure only once all have finished, so a rollback
    sees everything they made."""
    for outcome in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


def pod_ips(result: cni.Result) -> list[str]:
    """The pod interface's IPs, IPv4 first, then the rest in result order (R-CNI-11)."""
    ips = [str(ip.address.ip) for ip in result.ips_of_interface(podnet.POD_IFNAME)]
    if not ips:
        raise cni.CNIError(f"the network result has no IP address for {podnet.POD_IFNAME}")
    return sorted(ips, key=lambda ip: ipaddress.ip_address(ip).version)


def _sandboxes_from(records: dict[str, dict[str, Any]]) -> list[Sandbox]:
    found = []
    for sandbox_id, record in records.items():
        try:
            found.append(Sandbox.from_json(record))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable sandbox record kept in the log for inspection",
                      extra={"sandbox": sandbox_id, "error": str(exc)})
    return found


def _remove_pod_dir(pod_dir: Path) -> None:
    """The pod's directory, after detaching whatever is still mounted in it (a crash mid-Run)."""
    for target in mounts_below(str(pod_dir)):
        unmount(target)
    shutil.rmtree(pod_dir, ignore_errors=True)

