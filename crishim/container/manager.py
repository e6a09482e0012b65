"""The container lifecycle: records on disk, one conmon per container, runc/crun for the rest.

Each container's directory (`root/<id>`) is its OCI bundle, conmon's working and persist directory and
the home of its record, so a restarted crishim finds everything it needs there and in conmon's exit file.
A container's exit is noticed through a pidfd on its conmon (conmon exits right after writing the exit
file), so nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, cast

from crishim.container import apparmor, crilog, exec_cgroup, userns
from crishim.container import conmon as conmon_mod
from crishim.container.conmon import Conmon, ExecResult
from crishim.container.features import HandlerFeatures, probe
from crishim.container.inroot import resolve_in_root
from crishim.container.model import (
    AppArmorKind,
    Container,
    ContainerSpec,
    ContainerState,
    Mount,
    Resources,
    SeccompKind,
)
from crishim.container.oci import OCIRuntimeError, RuntimeHandler, hugetlb_available
from crishim.container.ocispec import (
    SpecInputs,
    build_spec,
    exec_process,
    held_capabilities,
    infra_spec,
    linux_resources,
)
from crishim.container.users import read_user_files, resolve_user
from crishim.container.validate import validate_container
from crishim.errors import (
    AlreadyExists,
    CrishimError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from crishim.log import Phases
from crishim.sandbox.model import NamespaceMode, Sandbox
from crishim.store import RUN_DIR, private_dir, read_json, write_json_atomic

log = logging.getLogger(__name__)

RECORD = "container.json"
# What runc and crun say when the request does not fit the container: its command is not there
# (`exec: "x": executable file not found`, crun's `executable file `x` not found`), a directory is
# mounted where the image has a file, a destination runc refuses (inside /proc).
_MISFIT = re.compile(r'exec: \\?"|executable file `.*` not found|error mounting .*: not a directory'
                     r'|cannot be mounted because|error reopening /dev/null')
EXEC_OUTPUT_LIMIT = 16 * 1024 * 1024
# What kubelet looks for in CreateContainer's error (k8s.io/cri-api errors.ErrImageVolumeMountFailed).
IMAGE_VOLUME_MOUNT_FAILED = "ImageVolumeMountFailed"
KILL_WAIT = 30.0
REOPEN_WAIT = 5.0


class RootfsLike(Protocol):
    @property
    def merged(self) -> str | os.PathLike[str]: ...

    async def mount(self) -> None: ...


class ImageLike(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def config(self) -> dict[str, Any]: ...


class RootfsProvider(Protocol):
    """What the image manager offers: a writable root filesystem per container and read-only image
    volumes, mounted by us and unmounted and deleted by `release_rootfs` / `release_image_volumes`."""

    async def prepare_rootfs(self, image_id: str, container_id: str,
                             container_dir: Path) -> RootfsLike: ...

    async def release_rootfs(self, container_id: str) -> None: ...

    async def prepare_image_volume(self, ref: str, container_id: str, index: int,
                                   directory: Path) -> tuple[RootfsLike, str]: ...

    async def release_image_volumes(self, container_id: str) -> None: ...


@dataclass(frozen=True)
class ListFilter:
    id_prefix: str = ""
    state: ContainerState | None = None
    sandbox_id: str = ""
    labels: dict[str, str] | None = None

    def matches(self, c: Container) -> bool:
        return (c.id.startswith(self.id_prefix)
                and (self.state is None or c.state == self.state)
                and (not self.sandbox_id or c.sandbox_id.startswith(self.sandbox_id))
                and all(c.spec.labels.get(k) == v for k, v in (self.labels or {}).items()))


class ContainerManager:
    def __init__(self, root: Path, run_dir: Path, runtimes: dict[str, RuntimeHandler],
                 conmon_path: str, rootfs: RootfsProvider, default_handler: str = "runc",
                 exec_output_limit: int = EXEC_OUTPUT_LIMIT,
                 infra_binary: str = "/usr/bin/catatonit", idmap_root: Path | None = None) -> None:
        if default_handler not in runtimes:
            raise ValueError(f"default runtime handler {default_handler!r} is not configured")
        self.root = root
        self.run_dir = run_dir
        # Where user-namespaced containers get their idmapped root filesystems: outside the private
        # run_dir, since the mapped root must walk down to them (searchable, not listable).
        self.idmap_root = idmap_root or run_dir / "idmap"
        self.runtimes = runtimes
        self.default_handler = default_handler
        self.conmon = Conmon(conmon_path, str(run_dir / "sock"))
        self.exec_output_limit = exec_output_limit
        # A static catatonit: PID 1 of pod-wide PID namespaces (see ocispec.infra_spec).
        self.infra_binary = infra_binary
        self._rootfs = rootfs
        self._containers: dict[str, Container] = {}
        self._names: dict[tuple[str, str, int], str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._exited: dict[str, asyncio.Event] = {}
        # `runtime delete` run right after an exit, outside the container's lock; True once done.
        self._runtime_deletes: dict[str, asyncio.Future[bool]] = {}
        self._pidfds: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._cleanups: dict[str, asyncio.Future[None]] = {}
        self._installed = False
        self._hugetlb = True
        self.features: dict[str, HandlerFeatures] = {}
        self._held_capabilities: list[str] | None = None
        self._apparmor = False
        # Writes every container's CRI log from what its conmon records (see crilog).
        self.logs = crilog.LogCopier()
        # Told "created", "started", "stopped" (exited) and "deleted" (GetContainerEvents).
        self.on_change: Callable[[Container, str], None] | None = None

    @property
    def exit_dir(self) -> Path:
        return self.run_dir / "exits"

    @property
    def exec_dir(self) -> Path:
        return self.run_dir / "exec"

    async def _install(self) -> None:
        """Directories and runtime wrappers, once per process (recover() normally does it)."""
        if not self._installed:
            await asyncio.to_thread(self._dirs)
            self._hugetlb = await asyncio.to_thread(hugetlb_available)
            blocker = await asyncio.to_thread(self._userns_blocker)
            if blocker:
                log.info("no user namespaces for pods on this node", extra={"reason": blocker})
            self.features = {name: await probe(h, not blocker) for name, h in self.runtimes.items()}
            self._held_capabilities = await asyncio.to_thread(_own_capabilities)
            self._apparmor = await asyncio.to_thread(apparmor.host_enabled)
            self.logs.start()
            self._installed = True

    def _dirs(self) -> None:
        for d in (self.root, self.exit_dir, self.exec_dir, Path(self.conmon.socket_dir)):
            d.mkdir(parents=True, exist_ok=True)
        private_dir(self.idmap_root, RUN_DIR)
        for handler in self.runtimes.values():
            handler.install()

    def _userns_blocker(self) -> str:
        """Why pods cannot get user namespaces here ("" if they can): the kernel must idmap the
        filesystem of container dirs, and the mapped root must be able to walk down to the idmap root,
        where each such container's rootfs is mounted (userns.idmapped_layers)."""
        for directory in (self.idmap_root.parent, *self.idmap_root.parents):
            if not os.stat(directory).st_mode & 0o001:
                return (f"{directory} is not searchable by other users: a container's mapped root "
                        "could not reach its rootfs below it")
        reason = userns.idmap_unsupported(str(self.root))
        return f"cannot idmap {self.root}: {reason}" if reason else ""

    def supports_userns(self, handler: str) -> bool:
        return self.features.get(handler or self.default_handler, HandlerFeatures()).user_namespaces

    def _idmap_dir(self, cid: str) -> Path:
        return self.idmap_root / cid

    def _notify(self, c: Container, change: str) -> None:
        if self.on_change is not None and not c.infra:
            self.on_change(c, change)

    # ---- queries -------------------------------------------------------------------------------

    def get(self, container_id: str) -> Container | None:
        return self._containers.get(container_id)

    def _require(self, container_id: str) -> Container:
        c = self._containers.get(container_id)
        if c is None:
            raise NotFound(f"container {container_id!r} not found")
        return c

    def containers_of(self, sandbox_id: str) -> list[Container]:
        return [c for c in self._containers.values() if c.sandbox_id == sandbox_id and not c.infra]

    def _infra_of(self, sandbox_id: str) -> Container | None:
        return next((c for c in self._containers.values()
                     if c.infra and c.sandbox_id == sandbox_id), None)

    def image_in_use(self, image_id: str) -> bool:
        """As its rootfs or as an image volume."""
        return any(c.image_id == image_id or any(m.image_id == image_id for m in c.spec.mounts)
                   for c in self._containers.values())

    def handler_features(self) -> dict[str, HandlerFeatures]:
        return dict(self.features)

    def list_containers(self, flt: ListFilter | None = None) -> list[Container]:
        flt = flt or ListFilter()
        return [replace(c) for c in self._containers.values() if not c.infra and flt.matches(c)]

    async def status(self, container_id: str) -> Container:
        """While conmon is watched its exit wakes `_refresh`, so the record in memory is current."""
        c = self._require(container_id)
        if c.id not in self._pidfds:
            await self._refresh(c)
        return replace(c)

    # ---- create / start ------------------------------------------------------------------------

    async def create(self, sandbox: Sandbox, spec: ContainerSpec, image: ImageLike) -> Container:
        handler_name = sandbox.spec.runtime_handler or self.default_handler
        handler = self.runtimes.get(handler_name)
        if handler is None:
            raise InvalidArgument(f"unknown runtime handler {handler_name!r}; "
                                  f"configured: {sorted(self.runtimes)}")
        await self._install()
        validate_container(spec, sandbox.spec.log_directory, self._rro(handler))
        sec = spec.security
        profile = functools.partial(apparmor.process_profile, sec.apparmor, sec.apparmor_profile,
                                    sec.privileged, self._apparmor)
        # Only a Localhost profile reads the loaded list; the rest is decided without a thread hop.
        apparmor_profile = (await asyncio.to_thread(profile) if sec.apparmor == AppArmorKind.LOCALHOST
                            else profile())
        key = (sandbox.id, spec.name, spec.attempt)
        if key in self._names:
            raise AlreadyExists(f"container {spec.name!r} attempt {spec.attempt} already exists in "
                                f"pod sandbox {sandbox.id} as {self._names[key]}")
        cid = secrets.token_hex(32)
        self._names[key] = cid
        cdir = self.root / cid
        phases = Phases()
        try:
            await self._install()
            userns.check_mount_mappings(spec.mounts, bool(sandbox.user_ns_path))
            await asyncio.to_thread(cdir.mkdir, mode=0o700)
            phases.mark("dir")
            rootfs = await self._rootfs.prepare_rootfs(image.id, cid, cdir)
            rootfs = await self._over_idmapped_layers(sandbox, rootfs, self._idmap_dir(cid) / "rootfs")
            phases.mark("rootfs_dirs")
            await rootfs.mount()
            phases.mark("rootfs_mount")
            spec = await self._mount_image_volumes(sandbox, spec, cid, cdir)
            spec = await self._idmap_volumes(spec, cid)
            c = await self._create(sandbox, spec, image, handler, cid, cdir, str(rootfs.merged),
                                   apparmor_profile, phases)
        except BaseException:
            self._names.pop(key, None)
            self._containers.pop(cid, None)
            with contextlib.suppress(Exception):
                await self._remove_files(cid, cdir, handler)
            raise
        return replace(c)

    def _rro(self, handler: RuntimeHandler) -> bool:
        return self.features.get(handler.name, HandlerFeatures()).recursive_read_only

    async def _over_idmapped_layers(self, sandbox: Sandbox, rootfs: RootfsLike, where: Path
                                    ) -> RootfsLike:
        """`rootfs` assembled over idmapped layers when the pod has its own user namespace, so the
        image's owners show inside as they are in the image (as it is otherwise)."""
        mapped_root = _mapped_root(sandbox)
        if mapped_root is None:
            return rootfs
        try:
            return cast(RootfsLike, await asyncio.to_thread(
                userns.idmapped_layers, cast(userns.Layers, rootfs), sandbox.user_ns_path, where,
                mapped_root))
        except OSError as exc:
            raise FailedPrecondition(f"cannot idmap image layers for the pod's user namespace: "
                                     f"{exc}") from exc

    async def _mount_image_volumes(self, sandbox: Sandbox, spec: ContainerSpec, cid: str, cdir: Path
                                   ) -> ContainerSpec:
        """Mount each image volume read-only under the container's dir; the mount then binds the
        image's root, or `image_sub_path` inside it, as its host path."""
        mounts = list(spec.mounts)
        for index, m in enumerate(mounts):
            if not m.image:
                continue
            try:
                volume, image_id = await self._rootfs.prepare_image_volume(
                    m.image, cid, index, cdir / "image-volumes" / str(index))
                volume = await self._over_idmapped_layers(sandbox, volume,
                                                          self._idmap_dir(cid) / f"image-{index}")
                await volume.mount()
                source = await asyncio.to_thread(_image_source, str(volume.merged), m)
            except CrishimError as exc:
                raise type(exc)(f"{IMAGE_VOLUME_MOUNT_FAILED}: mount {m.container_path!r}: "
                                f"{exc}") from exc
            mounts[index] = replace(m, host_path=source, image_id=image_id)
        return replace(spec, mounts=mounts)

    async def _idmap_volumes(self, spec: ContainerSpec, cid: str) -> ContainerSpec:
        """Idmapped clones of the host paths of mounts that ask for uidMappings/gidMappings (runc
        1.1.5 cannot make them); the mount then binds the clone."""
        mounts = list(spec.mounts)
        for index, m in enumerate(mounts):
            if m.uid_mappings:
                await asyncio.to_thread(_prepare_host_paths, replace(spec, mounts=[m]), "")
                try:
                    source = await asyncio.to_thread(userns.idmap_volume, m,
                                                     self._idmap_dir(cid) / f"volume-{index}")
                except OSError as exc:
                    raise FailedPrecondition(f"mount {m.container_path!r}: cannot idmap "
                                             f"{m.host_path}: {exc}") from exc
                mounts[index] = replace(m, idmapped_source=source)
        return replace(spec, mounts=mounts)

    async def _create(self, sandbox: Sandbox, spec: ContainerSpec, image: ImageLike,
                      handler: RuntimeHandler, cid: str, cdir: Path, rootfs: str,
                      apparmor_profile: str, phases: Phases) -> Container:
        sec = spec.security
        passwd, group = await asyncio.to_thread(read_user_files, Path(rootfs))
        phases.mark("users")
        user = resolve_user(run_as_user=sec.run_as_user, run_as_username=sec.run_as_username,
                            run_as_group=sec.run_as_group, supplemental_groups=sec.supplemental_groups,
                            image_user=str(image.config.get("User") or ""), passwd=passwd,
                            group=group, policy=sec.supplemental_groups_policy)
        inputs = SpecInputs(
            container_id=cid, rootfs=rootfs, user=user, image_config=image.config,
            cgroups_path=_cgroups_path(sandbox, cid),
            oom_score_adj_floor=await asyncio.to_thread(_own_oom_score_adj),
            localhost_seccomp=await self._localhost_profile(spec),
            target_pid=await self._pid_namespace_owner(sandbox, spec, handler),
            hugetlb=self._hugetlb, held_capabilities=self._held_capabilities,
            apparmor_profile=apparmor_profile,
        )
        phases.mark("spec_inputs")
        oci = build_spec(spec, sandbox, inputs)
        phases.mark("spec")
        log_path = ""
        if sandbox.spec.log_directory and spec.log_path:
            log_path = os.path.join(sandbox.spec.log_directory, spec.log_path)
        await asyncio.to_thread(_prepare_host_paths, spec, log_path)
        c = Container(
            id=cid, sandbox_id=sandbox.id, spec=spec, image_id=image.id,
            runtime_handler=handler.name, dir=str(cdir), log_path=log_path,
            created_at=time.time_ns(), rootfs=rootfs,
            stop_signal=spec.stop_signal or str(image.config.get("StopSignal") or "SIGTERM"),
            uid=user.uid, gid=user.gid, additional_gids=list(user.additional_gids),
        )
        phases.mark("host_paths")
        await self._launch(c, oci, handler, phases)
        self._notify(c, "created")
        log.info("container created", extra={"container": cid, "container_name": spec.name,
                                              "sandbox": sandbox.id, "pid": c.pid,
                                              "phases_ms": phases.ms})
        return c

    async def _launch(self, c: Container, oci: dict[str, Any], handler: RuntimeHandler,
                      phases: Phases | None = None) -> None:
        """Write the bundle, then have conmon run `runtime create` while the record is written.

        Neither waits for the other: a crishim that dies before the record is on disk finds a
        directory without one at restart and deletes that container (see `recover`). Only the first
        record is fsynced: what comes later (pids, RUNNING) is moot after a power cut, which ends
        the containers too; a killed crishim finds it all the same (renames are atomic).
        """
        phases = phases or Phases()
        await asyncio.to_thread(write_json_atomic, Path(c.dir) / "config.json", oci, durable=False)
        phases.mark("config_json")
        self._containers[c.id] = c
        record = asyncio.ensure_future(self._save(c))
        try:
            c.pid, c.conmon_pid = await conmon_mod.create(
                self.conmon, handler, container_id=c.id, name=c.spec.name, bundle=c.dir,
                log_path=f"{c.dir}/{crilog.CONMON_FILE}", exit_dir=str(self.exit_dir),
                stdin=c.spec.stdin, tty=c.spec.tty, stdin_once=c.spec.stdin_once)
            phases.mark("conmon_runtime_create")
        except OCIRuntimeError as exc:
            if _MISFIT.search(str(exc)):
                # Only the runtime can tell (it looks inside the container, after the mounts); the
                # failure is the request's, not crishim's.
                raise FailedPrecondition(f"container {c.spec.name!r} cannot be set up as requested: "
                                         f"{exc}") from exc
            raise
        finally:
            await record
        phases.mark("record_wait")
        try:
            await self.logs.track(c.id, c.dir, c.log_path or os.devnull)
        except OSError as exc:
            raise FailedPrecondition(f"container {c.spec.name!r}: cannot open its log "
                                     f"{c.log_path!r} (config.log_path): {exc.strerror}") from exc
        phases.mark("log_copy")
        await self._save(c, durable=False)
        self._watch(c)
        phases.mark("record")

    async def _pid_namespace_owner(self, sandbox: Sandbox, spec: ContainerSpec,
                                   handler: RuntimeHandler) -> int:
        """The pid whose PID namespace the container joins (0: a new one or the host's)."""
        mode = spec.security.pid_mode
        if mode == NamespaceMode.TARGET:
            return self._target_pid(sandbox, spec)
        if mode != NamespaceMode.POD:
            return 0
        async with self._lock(f"infra-{sandbox.id}"):
            infra = self._infra_of(sandbox.id)
            if infra is not None:
                await self._refresh(infra)
                if infra.state == ContainerState.RUNNING:
                    return infra.pid
                await self.remove(infra.id)
            return (await self._start_infra(sandbox, handler)).pid

    async def _start_infra(self, sandbox: Sandbox, handler: RuntimeHandler) -> Container:
        cid = secrets.token_hex(32)
        cdir = self.root / cid
        rootfs = cdir / "rootfs"
        mapped_root = _mapped_root(sandbox)
        try:
            if mapped_root is None:
                await asyncio.to_thread(rootfs.mkdir, mode=0o700, parents=True)
            else:
                await asyncio.to_thread(cdir.mkdir, mode=0o700)
                rootfs = await asyncio.to_thread(userns.mapped_root_dir, self._idmap_dir(cid) / "rootfs",
                                                 mapped_root)
            oci = infra_spec(sandbox, str(rootfs), _cgroups_path(sandbox, cid), self.infra_binary,
                             await asyncio.to_thread(_own_oom_score_adj))
            c = Container(id=cid, sandbox_id=sandbox.id, spec=ContainerSpec(name="infra"),
                          image_id="", runtime_handler=handler.name, dir=str(cdir), log_path="",
                          created_at=time.time_ns(), rootfs=str(rootfs), infra=True)
            await self._launch(c, oci, handler)
            await self.start(cid)
        except BaseException:
            self._containers.pop(cid, None)
            with contextlib.suppress(Exception):
                await self._remove_files(cid, cdir, handler)
            raise
        log.info("pod infra process started", extra={"sandbox": sandbox.id, "pid": c.pid})
        return c

    async def _localhost_profile(self, spec: ContainerSpec) -> dict[str, Any] | None:
        sec = spec.security
        if sec.seccomp != SeccompKind.LOCALHOST:
            return None
        path = sec.seccomp_profile_path
        if not path.startswith("/"):
            raise InvalidArgument(f"seccomp localhost profile path {path!r} must be absolute")
        try:
            profile: dict[str, Any] = await asyncio.to_thread(read_json, Path(path))
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"cannot load seccomp profile {path!r}: {exc}") from exc
        return profile

    def _target_pid(self, sandbox: Sandbox, spec: ContainerSpec) -> int:
        if spec.security.pid_mode != NamespaceMode.TARGET:
            return 0
        target = self._containers.get(spec.security.target_id)
        if target is None or target.sandbox_id != sandbox.id:
            raise NotFound(f"target container {spec.security.target_id!r} not found in pod "
                           f"{sandbox.id}")
        return target.pid if target.state == ContainerState.RUNNING else 0

    async def start(self, container_id: str) -> None:
        c = self._require(container_id)
        async with self._lock(c.id):
            if c.state != ContainerState.CREATED:
                raise FailedPrecondition(f"container {c.id} is {c.state}, not CREATED")
            started_at = time.time_ns()
            phases = Phases()
            try:
                await self.runtimes[c.runtime_handler].start(c.id)
            except OCIRuntimeError:
                await self._refresh_locked(c)
                raise
            phases.mark("runtime_start")
            c.state = ContainerState.RUNNING
            c.started_at = started_at
            await self._save(c, durable=False)
            phases.mark("record")
        self._notify(c, "started")
        log.info("container started", extra={"container": c.id, "phases_ms": phases.ms})

    # ---- stop / remove -------------------------------------------------------------------------

    async def stop(self, container_id: str, grace: float) -> None:
        """Stop signal, up to `grace` seconds, then SIGKILL; a no-op for unknown or exited ones."""
        c = self._containers.get(container_id)
        if c is None:
            return
        await self._refresh(c)
        if c.state not in (ContainerState.RUNNING, ContainerState.CREATED):
            return
        handler = self.runtimes[c.runtime_handler]
        if grace > 0 and c.state == ContainerState.RUNNING:
            await self._signal(c, handler, c.stop_signal)
            if await self._wait_exit(c, grace):
                return
        await self._signal(c, handler, "SIGKILL")
        if not await self._wait_exit(c, KILL_WAIT):
            raise DeadlineExceeded(f"container {c.id} did not exit {KILL_WAIT}s after SIGKILL")

    async def _signal(self, c: Container, handler: RuntimeHandler, signal: str) -> None:
        try:
            await handler.kill(c.id, signal)
        except OCIRuntimeError as exc:
            # It may have exited in between: the runtime sees it gone a moment before conmon records
            # the exit, so a container the runtime calls stopped waits for that record.
            state: dict[str, Any] | None = {}
            with contextlib.suppress(OCIRuntimeError):
                state = await handler.state(c.id)
            gone = state is None or state.get("status") == "stopped"
            if not await self._wait_exit(c, KILL_WAIT if gone else 0):
                raise FailedPrecondition(f"cannot signal container {c.id}: {exc}") from exc

    async def _wait_exit(self, c: Container, within: float) -> bool:
        """True once it exited; a container a concurrent remove took away is gone, so stopped too
        (waiting for its exit would wait for an event nobody sets any more)."""
        if self._containers.get(c.id) is not c:
            return True
        event = self._exited.setdefault(c.id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), within)
        except TimeoutError:
            await self._refresh(c)
        return c.state == ContainerState.EXITED or self._containers.get(c.id) is not c

    async def remove(self, container_id: str) -> None:
        """Kill a live container first; an unknown id is already removed."""
        c = self._containers.get(container_id)
        if c is None:
            return
        phases = Phases()
        await self.stop(c.id, 0)
        phases.mark("stop")
        async with self._lock(c.id):
            if self._containers.get(c.id) is not c:
                return
            # Usually done when it exited: then the cgroup is gone before we answer, as in containerd.
            await self._delete_runtime(c.id, self.runtimes[c.runtime_handler])
            phases.mark("runtime_delete")
            # Without its record the directory is an unfinished container to a restarted crishim,
            # which deletes it: the cleanup below may safely be cut short.
            await asyncio.to_thread(_unlink, Path(c.dir) / RECORD)
            phases.mark("record")
            self._unwatch(c.id)
            self._containers.pop(c.id, None)
            if not c.infra:
                self._names.pop((c.sandbox_id, c.spec.name, c.spec.attempt), None)
            exited = self._exited.pop(c.id, None)
            if exited is not None:
                exited.set()  # wakes a concurrent stop waiting for it
        self._locks.pop(c.id, None)
        self._cleanups[c.id] = asyncio.ensure_future(self._cleanup(c))
        self._notify(c, "deleted")
        log.info("container removed", extra={"container": c.id, "phases_ms": phases.ms})

    async def _cleanup(self, c: Container) -> None:
        """After RemoveContainer answered (as containerd's snapshot GC runs after its answer): the
        rootfs and the directory; `remove_all` and `close` wait for it."""
        phases = Phases()
        try:
            await self._remove_files(c.id, Path(c.dir), self.runtimes[c.runtime_handler], phases,
                                     runtime=False)
        except Exception as exc:  # left for the next start's recovery, which removes record-less dirs
            log.warning("container cleanup failed", extra={"container": c.id, "error": str(exc)})
        finally:
            self._cleanups.pop(c.id, None)
        log.info("container files removed", extra={"container": c.id, "phases_ms": phases.ms})

    async def settle(self, container_ids: list[str] | None = None) -> None:
        """Wait for the background cleanups of removed containers (all of them by default)."""
        pending = [t for cid, t in self._cleanups.items() if container_ids is None or cid in container_ids]
        await asyncio.gather(*pending, return_exceptions=True)

    async def _remove_files(self, cid: str, cdir: Path, handler: RuntimeHandler,
                            phases: Phases | None = None, runtime: bool = True) -> None:
        """The runtime's state (unless `runtime` is False: done already), the rootfs, the files."""
        phases = phases or Phases()
        await self.logs.untrack(cid)
        if runtime:
            await self._delete_runtime(cid, handler)
        phases.mark("runtime_delete")
        await asyncio.to_thread(userns.release, self._idmap_dir(cid))  # overlays over its layers first
        await self._rootfs.release_rootfs(cid)
        await self._rootfs.release_image_volumes(cid)
        phases.mark("rootfs_release")
        await asyncio.to_thread(self._remove_monitored, cdir, cid, self.exit_dir / cid)
        phases.mark("dir_remove")

    async def stop_all(self, sandbox_id: str, grace: float = 0) -> None:
        """Stop the pod's containers, then its infra process (which ends their PID namespace)."""
        await asyncio.gather(*(self.stop(c.id, grace) for c in self.containers_of(sandbox_id)))
        infra = self._infra_of(sandbox_id)
        if infra is not None:
            await self.stop(infra.id, 0)

    async def remove_all(self, sandbox_id: str) -> None:
        """Remove the pod's containers and wait until their files are gone too."""
        removed = [c.id for c in self.containers_of(sandbox_id)]
        await asyncio.gather(*(self.remove(cid) for cid in removed))
        infra = self._infra_of(sandbox_id)
        if infra is not None:
            removed.append(infra.id)
            await self.remove(infra.id)
        self._locks.pop(f"infra-{sandbox_id}", None)
        await self.settle(removed)

    # ---- exec, resources, logs -----------------------------------------------------------------

    async def exec_sync(self, container_id: str, cmd: list[str], kill_after: float) -> ExecResult:
        """Run `cmd` in the container; after `kill_after` seconds (0: no limit) kill it and everything
        it started, and raise DeadlineExceeded."""
        c = await self._running(container_id)
        if kill_after < 0:
            raise InvalidArgument("exec timeout must not be negative")
        config = await asyncio.to_thread(read_json, Path(c.dir) / "config.json")
        process = exec_process(config["process"], cmd)
        exec_id = f"{c.id[:16]}-exec-{secrets.token_hex(6)}"
        # A bundle dir of its own: conmon creates its ctl/winsz FIFOs there and must not replace
        # the container monitor's.
        work = self.exec_dir / exec_id
        await self._install()
        await asyncio.to_thread(work.mkdir)
        try:
            await asyncio.to_thread(write_json_atomic, work / "process.json", process)
            return await conmon_mod.exec_sync(
                self.conmon, self.runtimes[c.runtime_handler], container_id=c.id,
                exec_id=exec_id, bundle=str(work), process_spec=str(work / "process.json"),
                log_path=str(work / "output.log"), cgroups_path=config["linux"]["cgroupsPath"],
                kill_after=kill_after, output_limit=self.exec_output_limit)
        finally:
            await asyncio.to_thread(self._remove_monitored, work, exec_id)

    async def update_resources(self, container_id: str, resources: Resources) -> None:
        c = self._require(container_id)
        async with self._lock(c.id):
            await self._refresh_locked(c)
            if c.state not in (ContainerState.CREATED, ContainerState.RUNNING):
                raise FailedPrecondition(f"container {c.id} is {c.state}; cannot update resources")
            oci = linux_resources(resources, hugetlb=self._hugetlb)
            oci.pop("devices")
            await self.runtimes[c.runtime_handler].update(c.id, oci)
            c.spec.resources = resources
            await self._save(c)

    async def reopen_log(self, container_id: str) -> None:
        c = await self._running(container_id)
        if not c.log_path:
            raise FailedPrecondition(f"container {c.id} has no log path")
        if self.logs.tracks(c.id):
            try:
                await self.logs.reopen(c.id)
            except OSError as exc:
                raise FailedPrecondition(f"container {c.id}: cannot reopen its log {c.log_path}: "
                                         f"{exc.strerror}") from exc
            return
        # Created by a crishim from before crilog: its conmon writes the log itself.
        try:
            await asyncio.to_thread(crilog.ask_conmon_to_reopen, c.dir)
        except OSError as exc:
            raise FailedPrecondition(f"cannot reach the container monitor's control FIFO: {exc}") from exc
        deadline = time.monotonic() + REOPEN_WAIT
        while not await asyncio.to_thread(os.path.exists, c.log_path):
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"container {c.id}: log {c.log_path} was not reopened")
            await asyncio.sleep(0.01)

    async def _running(self, container_id: str) -> Container:
        c = self._require(container_id)
        await self._refresh(c)
        if c.state != ContainerState.RUNNING:
            raise FailedPrecondition(f"container {c.id} is {c.state}, not RUNNING")
        return c

    # ---- exits and recovery --------------------------------------------------------------------

    def _lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    async def _save(self, c: Container, durable: bool = True) -> None:
        await asyncio.to_thread(write_json_atomic, Path(c.dir) / RECORD, c.to_json(), durable=durable)

    async def _refresh(self, c: Container, conmon_gone: bool = False) -> None:
        if c.state == ContainerState.EXITED:
            return
        async with self._lock(c.id):
            await self._refresh_locked(c, conmon_gone)

    async def _refresh_locked(self, c: Container, conmon_gone: bool = False) -> None:
        """Move a container to EXITED once conmon recorded its exit (or vanished without doing so)."""
        if c.state == ContainerState.EXITED or self._containers.get(c.id) is not c:
            return
        result = await asyncio.to_thread(_read_exit, Path(c.dir))
        if result is None and not conmon_gone:
            return
        await self.logs.finish(c.id)  # kubelet reads the log's end once it sees the exit
        if result is None:
            c.exit_code, c.finished_at, oom = 255, time.time_ns(), False
            c.message = "the container monitor (conmon) disappeared without recording an exit code"
        else:
            c.exit_code, c.finished_at, oom = result
            # The file's coarse timestamp may precede our clock reading at start.
            c.finished_at = max(c.finished_at, c.started_at)
        c.state = ContainerState.EXITED
        c.reason = "OOMKilled" if oom else ("Completed" if c.exit_code == 0 else "Error")
        c.pid = 0
        await self._save(c)
        log.info("container exited", extra={"container": c.id, "exit_code": c.exit_code,
                                             "reason": c.reason})
        self._notify(c, "stopped")
        self._runtime_deletes[c.id] = asyncio.ensure_future(self._delete_after_exit(c))

    async def _delete_after_exit(self, c: Container) -> bool:
        """Free the runtime's state and cgroup at once, then tell StopContainer (as containerd's task
        delete precedes its exit event); not under the container's lock, which would hold up reads."""
        try:
            await self.runtimes[c.runtime_handler].delete(c.id)
        except OCIRuntimeError as exc:
            log.warning("runtime delete after exit failed", extra={"container": c.id,
                                                                    "error": str(exc)})
            return False
        finally:
            self._exited.setdefault(c.id, asyncio.Event()).set()
        return True

    async def _delete_runtime(self, cid: str, handler: RuntimeHandler) -> None:
        """`runtime delete`, unless the one run right after the container's exit succeeded."""
        deleted = self._runtime_deletes.pop(cid, None)
        if deleted is None or not await deleted:
            await handler.delete(cid)

    def _watch(self, c: Container) -> None:
        """Get woken when conmon exits: it does so right after writing the exit file."""
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(c.conmon_pid)
        except ProcessLookupError:
            self._spawn(self._refresh(c, conmon_gone=True))
            return
        self._pidfds[c.id] = fd

        def exited() -> None:
            self._unwatch(c.id)
            self._spawn(self._refresh(c, conmon_gone=True))

        loop.add_reader(fd, exited)

    def _unwatch(self, cid: str) -> None:
        fd = self._pidfds.pop(cid, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def recover(self) -> None:
        """Load the records an earlier crishim left and pick up its containers where they are."""
        await self._install()
        records, orphans = await asyncio.to_thread(_load_records, self.root)
        for cid in orphans:
            # A create interrupted before its record was written: nothing of it may stay.
            log.warning("removing an unfinished container", extra={"container": cid})
            for handler in self.runtimes.values():
                with contextlib.suppress(OCIRuntimeError):
                    await handler.delete(cid)
            await self._remove_files(cid, self.root / cid, self.runtimes[self.default_handler])
        for c in records:
            if c.runtime_handler not in self.runtimes:
                log.warning("container of an unconfigured runtime handler ignored",
                            extra={"container": c.id, "handler": c.runtime_handler})
                continue
            self._containers[c.id] = c
            if not c.infra:
                self._names[(c.sandbox_id, c.spec.name, c.spec.attempt)] = c.id
            await self._resume_log_copy(c)
            if c.state == ContainerState.EXITED:
                await self.logs.finish(c.id)
                continue
            if c.conmon_pid and await asyncio.to_thread(_is_conmon_of, c.conmon_pid, c.id):
                self._watch(c)
            else:
                await self._refresh(c, conmon_gone=True)
        await self._reap_execs()
        await asyncio.to_thread(self._remove_stray_monitor_files)

    def _remove_monitored(self, bundle: Path, uuid: str, *files: Path) -> None:
        """Blocking: a bundle conmon monitored, its attach-socket link and `files`."""
        _remove_tree(bundle, *files)
        conmon_mod.remove_attach_link(self.conmon.socket_dir, uuid, str(bundle))

    def _remove_stray_monitor_files(self) -> None:
        """conmon's exit file and attach-socket link of a container whose removal a crash cut short after
        its directory (what marks an unfinished container) was gone already, and the links of execs
        (`_reap_execs` removed their bundles before)."""
        for path in self.exit_dir.iterdir():
            if path.name not in self._containers and not (self.root / path.name).exists():
                log.warning("removing a removed container's exit file", extra={"path": str(path)})
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        for link in conmon_mod.remove_stray_attach_links(self.conmon.socket_dir):
            log.warning("removed an attach link whose bundle is gone", extra={"path": link})

    async def _reap_execs(self) -> None:
        """An ExecSync an earlier crishim ran when it died has no caller any more: what it started is
        killed and its bundle removed (no exec of this process has begun yet)."""
        for work in await asyncio.to_thread(lambda: list(self.exec_dir.iterdir())):
            owner = next((c for c in self._containers.values() if work.name.startswith(f"{c.id[:16]}-exec-")),
                         None)
            if owner is not None:
                try:
                    config = await asyncio.to_thread(read_json, Path(owner.dir) / "config.json")
                except FileNotFoundError:
                    pass
                else:
                    await asyncio.to_thread(exec_cgroup.reap, config["linux"]["cgroupsPath"], work.name,
                                            KILL_WAIT)
            log.warning("removing an exec interrupted by a crash", extra={"exec": work.name})
            await asyncio.to_thread(_remove_tree, work)

    async def _resume_log_copy(self, c: Container) -> None:
        """Go on copying what conmon recorded, also while no crishim ran (see crilog)."""
        if not await asyncio.to_thread(crilog.has_records, c.dir):
            return  # created by a crishim from before crilog: conmon writes the log itself
        try:
            await self.logs.track(c.id, c.dir, c.log_path or os.devnull)
        except OSError as exc:
            log.warning("cannot resume a container's log", extra={"container": c.id, "error": str(exc)})

    async def close(self) -> None:
        """Finish removals, forget the watches; the containers and their monitors keep running."""
        await self.settle()
        await self.logs.close()
        await asyncio.gather(*self._runtime_deletes.values(), return_exceptions=True)
        for cid in list(self._pidfds):
            self._unwatch(cid)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _mapped_root(sandbox: Sandbox) -> tuple[int, int] | None:
    """The host uid and gid of root in the pod's own user namespace (None: the host's)."""
    userns_spec = sandbox.spec.own_userns
    if userns_spec is None or not sandbox.user_ns_path:
        return None
    return userns_spec.uids[0].host_id, userns_spec.gids[0].host_id


def _cgroups_path(sandbox: Sandbox, container_id: str) -> str:
    """cgroupfs path below the pod's parent (`/crishim` when kubelet gave none)."""
    return f"{(sandbox.spec.cgroup_parent or '/crishim').rstrip('/')}/{container_id}"


def _own_oom_score_adj() -> int:
    return int(Path("/proc/self/oom_score_adj").read_text())


def _own_capabilities() -> list[str]:
    return held_capabilities(Path("/proc/self/status").read_text())


def _read_exit(cdir: Path) -> tuple[int, int, bool] | None:
    """(exit code, finish time, OOM killed) from conmon's files, None while it has not exited."""
    path = cdir / "exit"
    try:
        text = path.read_text().strip()
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    code = int(text) if text.lstrip("-").isdigit() else 255
    return code, mtime, (cdir / "oom").exists()


def _prepare_host_paths(spec: ContainerSpec, log_path: str) -> None:
    """Create missing bind-mount sources (as directories, like containerd) and the log directory."""
    for mount in spec.mounts:
        if not os.path.lexists(mount.host_path):
            os.makedirs(mount.host_path, exist_ok=True)
    if log_path:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)


def _image_source(root: str, mount: Mount) -> str:
    """The host path an image volume's mount binds: `image_sub_path` resolved inside the image (never
    out of it), which must be a directory."""
    if not mount.image_sub_path:
        return root
    what = f"image_sub_path {mount.image_sub_path!r} of image {mount.image!r}"
    try:
        path = resolve_in_root(root, mount.image_sub_path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise NotFound(f"{what} does not exist in the image") from exc
        raise InvalidArgument(f"{what}: {exc.strerror}") from exc
    if not os.path.isdir(path):
        raise InvalidArgument(f"{what} is not a directory (only directories can be mounted)")
    return path


def _is_conmon_of(pid: int, cid: str) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(args) and os.path.basename(args[0]) == b"conmon" and cid.encode() in args


def _load_records(root: Path) -> tuple[list[Container], list[str]]:
    """The records, and the ids of container dirs that never got one."""
    records: list[Container] = []
    orphans: list[str] = []
    for cdir in sorted(root.iterdir()):
        if not cdir.is_dir():
            continue
        path = cdir / RECORD
        if not path.exists():
            orphans.append(cdir.name)
            continue
        try:
            records.append(Container.from_json(read_json(path)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("unreadable container record skipped", extra={"path": str(path),
                                                                     "error": str(exc)})
    return records, orphans


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _remove_tree(tree: Path, *files: Path) -> None:
    shutil.rmtree(tree, ignore_errors=True)
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
