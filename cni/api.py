"""The runtime side of CNI: run a network's plugin chain for a container (R-CNI-3 … R-CNI-13)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cni import cache, version
from cni.cache import CachedAttachment, CorruptCache
from cni.config import NAME_RE, NetworkConfigList, PluginConf, parse_network_config_list
from cni.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_ENVIRONMENT,
    IO_FAILURE,
    UNKNOWN_CONTAINER,
    CNIError,
    ConfigError,
)
from cni.invoke import find_in_path, plugin_env, run_plugin
from cni.result import Result, parse_result

log = logging.getLogger("cni")

_IFNAME_BAD = re.compile(r"[/:\s]")
_IFNAME_MAX = 15


@dataclass(frozen=True)
class RuntimeConf:
    """Per-attachment parameters: the same values must be used for ADD, CHECK and DEL.

    ``args`` become ``CNI_ARGS`` (``K=V;K=V``, in order); ``capability_args`` is the source of each
    plugin's ``runtimeConfig``, filtered by the capabilities the plugin declares.
    """

    container_id: str
    netns: str
    ifname: str
    args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)

    def cni_args(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.args)


@dataclass(frozen=True)
class PluginCall:
    """One plugin execution, reported to the observer (for timelines and metrics)."""

    verb: str
    plugin_type: str
    network: str
    started: float
    duration: float
    error: CNIError | None


@dataclass(frozen=True)
class VersionInfo:
    """What a plugin binary answered to VERSION."""

    cni_version: str
    supported_versions: tuple[str, ...]

    def supports(self, wanted: str) -> bool:
        return wanted in self.supported_versions


def kubernetes_args(
    pod_namespace: str, pod_name: str, sandbox_id: str, pod_uid: str
) -> tuple[tuple[str, str], ...]:
    """The CNI_ARGS Kubernetes runtimes send (R-CNI-10); IgnoreUnknown keeps plugins lenient."""
    return (
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", pod_namespace),
        ("K8S_POD_NAME", pod_name),
        ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id),
        ("K8S_POD_UID", pod_uid),
    )


def validate_runtime_conf(rt: RuntimeConf, *, need_netns: bool) -> None:
    """Reject what plugins (libcni/skel) would reject, before running anything (R-CNI-5)."""
    if not rt.container_id:
        raise CNIError("missing container ID", code=UNKNOWN_CONTAINER)
    if not NAME_RE.match(rt.container_id):
        raise CNIError(
            f"invalid container ID {rt.container_id!r}: must match {NAME_RE.pattern}",
            code=INVALID_ENVIRONMENT,
        )
    name = rt.ifname
    if not name or len(name) > _IFNAME_MAX or name in (".", "..") or _IFNAME_BAD.search(name):
        raise CNIError(
            f"invalid interface name {name!r}: need 1-{_IFNAME_MAX} characters, not '.' or '..', "
            "without '/', ':' or whitespace",
            code=INVALID_ENVIRONMENT,
        )
    if need_netns and not rt.netns:
        raise CNIError("missing network namespace path", code=INVALID_ENVIRONMENT)
    for key, value in rt.args:
        if not key or "=" in key or ";" in key or ";" in value:
            raise CNIError(
                f"invalid CNI_ARGS entry {key!r}={value!r}: keys need no '=' or ';', values no ';'",
                code=INVALID_ENVIRONMENT,
            )


def _normalise_port_mappings(value: Any) -> Any:
    """Only hostPort > 0 is a host port; protocols are lower-case (R-CNI-9)."""
    if not isinstance(value, list):
        return value
    out = []
    for pm in value:
        if not isinstance(pm, dict) or not isinstance(pm.get("hostPort"), int):
            out.append(pm)
        elif pm["hostPort"] > 0:
            proto = pm.get("protocol")
            out.append({**pm, "protocol": proto.lower()} if isinstance(proto, str) else pm)
    return out


def _runtime_config(plugin: PluginConf, capability_args: Mapping[str, Any]) -> dict[str, Any]:
    caps = sorted(plugin.capabilities)
    rc = {cap: capability_args[cap] for cap in caps if cap in capability_args}
    if "portMappings" in rc:
        rc["portMappings"] = _normalise_port_mappings(rc["portMappings"])
    return rc


def _plugin_stdin(
    net: NetworkConfigList,
    plugin: PluginConf,
    *,
    prev: dict[str, Any] | None = None,
    capability_args: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The plugin object with the list's name/version injected, unknown keys untouched."""
    conf = dict(plugin.raw)
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    if prev is not None:
        conf["prevResult"] = prev
    if capability_args is not None:
        rc = _runtime_config(plugin, capability_args)
        if rc:
            conf["runtimeConfig"] = rc
    if extra:
        conf.update(extra)
    return json.dumps(conf).encode()


def _as_version(result: dict[str, Any], target: str) -> dict[str, Any]:
    """A result in the config's version: unchanged if it already is, else converted."""
    if result.get("cniVersion") == target:
        return result
    return parse_result(result, target).to_version(target)


def _known_check_defect(plugin: PluginConf, rt: RuntimeConf, err: CNIError) -> str:
    """Recognise CHECK failures caused by plugin bugs (containernetworking-plugins 1.1.1)."""
    caps = _runtime_config(plugin, rt.capability_args)
    if plugin.type == "portmap" and caps.get("portMappings") and "could not check" in err.msg:
        return (
            "known portmap defect (containernetworking/plugins#819): CHECK fails whenever port "
            "mappings are set even though the DNAT rules exist; set disableCheck or upgrade"
        )
    if plugin.type == "bandwidth" and "bandwidth" not in caps and "panic" in err.msg + err.stderr:
        return (
            "known bandwidth defect: CHECK crashes when no bandwidth runtimeConfig is given; "
            "set disableCheck or pass bandwidth capability args"
        )
    return ""


class _RefLock:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _GCGate:
    """Readers/writer gate: ADD/DEL/CHECK share it, GC runs alone (SPEC lifecycle, R-CNI-7)."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._active = 0
        self._gc_waiting = 0
        self._gc_running = False

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._gc_running and not self._gc_waiting)
            self._active += 1
        try:
            yield
        finally:
            async with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            self._gc_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._gc_running and self._active == 0)
            finally:
                self._gc_waiting -= 1
            self._gc_running = True
        try:
            yield
        finally:
            async with self._cond:
                self._gc_running = False
                self._cond.notify_all()


def _raise_first(errors: list[CNIError]) -> None:
    """Raise the first error, listing the others as notes so none is lost."""
    if not errors:
        return
    first = errors[0]
    for other in errors[1:]:
        first.add_note(f"also: {other}")
    raise first


class CNIConfig:
    """Runs network config lists against containers, like libcni's CNIConfig.

    ``timeout`` bounds every single plugin execution (the plugin's process group is killed when it
    expires); each operation takes ``timeout=`` to override it. ``exec_prefix`` is prepended to
    every plugin command, e.g. ``["nsenter", "--net=/run/netns/node1"]`` to run plugins in another
    network namespace.

    The ADD cache is written atomically and fsynced. A caller with a group commit of its own passes
    ``cache_synced_by``: the library then skips its fsyncs and hands each new cache file to that
    callable, which must make it durable (one journal commit for many files, off the ADD path).

    Deliberate differences from libcni, all in the direction of not leaking resources:

    * a failed ADD is rolled back with a DEL of the whole list (R-CNI-8) unless
      ``rollback_failed_add=False``; an ADD failing with code 11 ("try again later") is rolled back
      and retried ``try_again_retries`` times, ``try_again_delay`` seconds apart (R-CNI-12);
    * DEL runs every plugin even if one fails (e.g. its binary is gone) and raises the first error
      afterwards; the cache entry is kept until a DEL fully succeeds;
    * DEL and CHECK reuse the CNI_ARGS and capability args cached by ADD (R-CNI-9, R-CNI-13).
    """

    def __init__(
        self,
        bin_dirs: Sequence[str],
        cache_dir: str = "/var/lib/cni",
        timeout: float = 120.0,
        observer: Callable[[PluginCall], None] | None = None,
        *,
        exec_prefix: Sequence[str] = (),
        rollback_failed_add: bool = True,
        try_again_retries: int = 2,
        try_again_delay: float = 1.0,
        cache_synced_by: Callable[[str], None] | None = None,
    ) -> None:
        self.bin_dirs = tuple(bin_dirs)
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.observer = observer
        self.exec_prefix = tuple(exec_prefix)
        self.rollback_failed_add = rollback_failed_add
        self.try_again_retries = try_again_retries
        self.try_again_delay = try_again_delay
        self.cache_synced_by = cache_synced_by
        self._locks: dict[tuple[str, str, str], _RefLock] = {}
        self._gate = _GCGate()

    # -- plumbing -------------------------------------------------------------------------------

    def _cni_env(self, verb: str, rt: RuntimeConf | None) -> dict[str, str]:
        return {
            "CNI_COMMAND": verb,
            "CNI_CONTAINERID": rt.container_id if rt else "",
            "CNI_NETNS": rt.netns if rt else "",
            "CNI_ARGS": rt.cni_args() if rt else "",
            "CNI_IFNAME": rt.ifname if rt else "",
            "CNI_PATH": ":".join(self.bin_dirs),
        }

    async def _exec(
        self,
        verb: str,
        plugin_type: str,
        network: str,
        cni_env: Mapping[str, str],
        stdin: bytes,
        limit: float,
    ) -> bytes:
        started = time.time()
        t0 = time.monotonic()
        error: CNIError | None = None
        try:
            path = find_in_path(plugin_type, self.bin_dirs)
            return await run_plugin([*self.exec_prefix, path], plugin_env(cni_env), stdin, limit)
        except CNIError as e:
            e.plugin_type, e.network, e.verb = plugin_type, network, verb
            error = e
            raise
        finally:
            if self.observer is not None:
                call = PluginCall(verb, plugin_type, network, started, time.monotonic() - t0, error)
                try:
                    self.observer(call)
                except Exception:
                    log.exception("CNI observer failed for %s", call)

    async def _run(
        self,
        verb: str,
        net: NetworkConfigList,
        plugin: PluginConf,
        rt: RuntimeConf | None,
        stdin: bytes,
        limit: float,
    ) -> bytes:
        return await self._exec(verb, plugin.type, net.name, self._cni_env(verb, rt), stdin, limit)

    @contextlib.asynccontextmanager
    async def _attachment(self, net: NetworkConfigList, rt: RuntimeConf) -> AsyncIterator[None]:
        """Serialise operations on one attachment; different attachments run in parallel."""
        key = (net.name, rt.container_id, rt.ifname)
        ref = self._locks.setdefault(key, _RefLock())
        ref.users += 1
        try:
            async with self._gate.shared(), ref.lock:
                yield
        finally:
            ref.users -= 1
            if ref.users == 0:
                del self._locks[key]

    def _limit(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def _cache_path(self, net_name: str, rt: RuntimeConf) -> str:
        return cache.cache_path(self.cache_dir, net_name, rt.container_id, rt.ifname)

    async def _read_cache(self, net: NetworkConfigList, rt: RuntimeConf) -> CachedAttachment | None:
        """The cached ADD record; an undecodable file is removed and treated as absent."""
        path = self._cache_path(net.name, rt)
        try:
            return await asyncio.to_thread(cache.read, path)
        except CorruptCache as e:
            log.warning("removing corrupt CNI cache file: %s", e)
            await asyncio.to_thread(cache.remove, path)
            return None
        except OSError as e:
            raise CNIError(f"cannot read CNI cache {path}: {e}", code=IO_FAILURE) from None

    @staticmethod
    def _with_cached_args(rt: RuntimeConf, att: CachedAttachment | None) -> RuntimeConf:
        if att is None or not att.network_name:
            return rt
        return replace(rt, args=att.cni_args, capability_args=att.capability_args)

    # -- ADD ------------------------------------------------------------------------------------

    async def add_network_list(
        self,
        net: NetworkConfigList,
        rt: RuntimeConf,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Result:
        """ADD every plugin in order, chaining prevResult; cache and return the final result."""
        limit = self._limit(timeout)
        validate_runtime_conf(rt, need_netns=True)
        async with self._attachment(net, rt):
            attempt = 0
            while True:
                try:
                    return await self._add(net, rt, limit)
                except CNIError as err:
                    retry = err.temporary and attempt < self.try_again_retries
                    if retry or self.rollback_failed_add:
                        await self._rollback(net, rt, limit, err)
                    if not retry:
                        raise
                attempt += 1
                await asyncio.sleep(self.try_again_delay)

    async def _rollback(self, net: NetworkConfigList, rt: RuntimeConf, limit: float, err: CNIError) -> None:
        try:
            await self._del(net, rt, limit)
        except CNIError as del_err:
            err.add_note(f"rollback DEL after the failed ADD also failed: {del_err}")

    async def _add(self, net: NetworkConfigList, rt: RuntimeConf, limit: float) -> Result:
        prev: dict[str, Any] | None = None
        for plugin in net.plugins:
            stdin = _plugin_stdin(net, plugin, prev=prev, capability_args=rt.capability_args)
            out = await self._run("ADD", net, plugin, rt, stdin, limit)
            try:
                prev = self._decode_add_output(out, net)
            except CNIError as e:
                e.plugin_type, e.network, e.verb = plugin.type, net.name, "ADD"
                raise
        assert prev is not None
        result = parse_result(prev, net.cni_version)
        record = CachedAttachment(
            network_name=net.name,
            container_id=rt.container_id,
            ifname=rt.ifname,
            netns=rt.netns,
            cni_args=rt.args,
            capability_args=dict(rt.capability_args),
            config=net.raw_bytes,
            result=prev,
        )
        durable = self.cache_synced_by is None
        try:
            path = await asyncio.to_thread(cache.write, record, self.cache_dir, durable=durable)
        except OSError as e:
            raise CNIError(f"failed to write CNI cache in {self.cache_dir}: {e}", code=IO_FAILURE) from None
        if self.cache_synced_by is not None:
            self.cache_synced_by(path)
        return result

    @staticmethod
    def _decode_add_output(out: bytes, net: NetworkConfigList) -> dict[str, Any]:
        """Parse a plugin's result, stamp a missing version, convert to the config's version."""
        text = out.strip()
        try:
            obj = json.loads(text) if text else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CNIError(
                "plugin succeeded but printed an invalid result",
                code=DECODE_FAILURE,
                details=repr(out[:500]),
            ) from None
        if obj is None:
            obj = {}
        if not isinstance(obj, dict):
            raise CNIError("plugin result is not a JSON object", code=DECODE_FAILURE)
        if not obj.get("cniVersion"):
            obj["cniVersion"] = net.cni_version
        parse_result(obj)
        return _as_version(obj, net.cni_version)

    # -- DEL ------------------------------------------------------------------------------------

    async def del_network_list(
        self,
        net: NetworkConfigList,
        rt: RuntimeConf,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """DEL every plugin in reverse order; repeated DELs succeed (plugins are idempotent)."""
        limit = self._limit(timeout)
        validate_runtime_conf(rt, need_netns=False)
        async with self._attachment(net, rt):
            await self._del(net, rt, limit)

    async def _del(self, net: NetworkConfigList, rt: RuntimeConf, limit: float) -> None:
        att = await self._read_cache(net, rt)
        rt = self._with_cached_args(rt, att)
        prev: dict[str, Any] | None = None
        cached = att.result if att is not None else None
        if cached is not None and version.at_least(net.cni_version, "0.4.0"):
            try:
                prev = _as_version(cached, net.cni_version)
            except CNIError as e:
                log.warning("ignoring unusable cached result for DEL of %s: %s", net.name, e)
        errors: list[CNIError] = []
        for plugin in reversed(net.plugins):
            stdin = _plugin_stdin(net, plugin, prev=prev, capability_args=rt.capability_args)
            try:
                await self._run("DEL", net, plugin, rt, stdin, limit)
            except CNIError as e:
                errors.append(e)
        _raise_first(errors)
        await asyncio.to_thread(cache.remove, self._cache_path(net.name, rt))

    # -- CHECK ----------------------------------------------------------------------------------

    async def check_network_list(
        self,
        net: NetworkConfigList,
        rt: RuntimeConf,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """CHECK every plugin against the cached ADD result (needs cniVersion >= 0.4.0)."""
        if not version.at_least(net.cni_version, "0.4.0"):
            raise CNIError(
                f'network "{net.name}": configuration version {net.cni_version} does not support '
                "the CHECK command (needs 0.4.0 or later)",
                code=INCOMPATIBLE_VERSION,
            )
        if net.disable_check:
            return
        validate_runtime_conf(rt, need_netns=True)
        limit = self._limit(timeout)
        async with self._attachment(net, rt):
            att = await self._read_cache(net, rt)
            if att is None or att.result is None:
                raise CNIError(
                    f'network "{net.name}": no cached ADD result for container '
                    f'"{rt.container_id}" interface "{rt.ifname}" in {self.cache_dir}; '
                    "CHECK needs a successful ADD first"
                )
            rt = self._with_cached_args(rt, att)
            prev = _as_version(att.result, net.cni_version)
            for plugin in net.plugins:
                stdin = _plugin_stdin(net, plugin, prev=prev, capability_args=rt.capability_args)
                try:
                    await self._run("CHECK", net, plugin, rt, stdin, limit)
                except CNIError as e:
                    e.hint = _known_check_defect(plugin, rt, e)
                    raise

    # -- GC / STATUS / VERSION ------------------------------------------------------------------

    async def gc_network_list(
        self,
        net: NetworkConfigList,
        valid_attachments: Sequence[tuple[str, str]] | Callable[[], Sequence[tuple[str, str]]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """DEL cached attachments of ``net`` not in ``valid_attachments``, then send GC (>= 1.1.0).

        Every cached attachment with this network name is a candidate, so give each runtime its
        own ``cache_dir`` if several share network names (or set ``disableGC``). Pass a callable to
        have the valid set read once GC runs alone: an ADD that finished just before is then in it.
        """
        if net.disable_gc:
            return
        limit = self._limit(timeout)
        errors: list[CNIError] = []
        async with self._gate.exclusive():
            if callable(valid_attachments):
                valid_attachments = valid_attachments()
            valid = set(valid_attachments)
            attachments = await asyncio.to_thread(cache.list_attachments, self.cache_dir)
            for att in attachments:
                if att.network_name != net.name or (att.container_id, att.ifname) in valid:
                    continue
                rt = RuntimeConf(att.container_id, att.netns, att.ifname)
                try:
                    await self._del(net, rt, limit)
                except CNIError as e:
                    errors.append(e)
            if version.at_least(net.cni_version, "1.1.0"):
                listed = [{"containerID": c, "ifname": i} for c, i in valid_attachments]
                extra = {"cni.dev/valid-attachments": listed, "cni.dev/attachments": listed}
                for plugin in net.plugins:
                    stdin = _plugin_stdin(net, plugin, extra=extra)
                    try:
                        await self._run("GC", net, plugin, None, stdin, limit)
                    except CNIError as e:
                        errors.append(e)
        _raise_first(errors)

    async def get_status_network_list(
        self,
        net: NetworkConfigList,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """STATUS every plugin (>= 1.1.0, older lists count as ready); codes 50/51 = not ready."""
        if not version.at_least(net.cni_version, "1.1.0"):
            return
        limit = self._limit(timeout)
        for plugin in net.plugins:
            await self._run("STATUS", net, plugin, None, _plugin_stdin(net, plugin), limit)

    async def get_version_info(
        self,
        plugin_type: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> VersionInfo:
        """Ask a plugin binary which spec versions it supports."""
        env = {
            "CNI_COMMAND": "VERSION",
            "CNI_CONTAINERID": "",
            "CNI_NETNS": "dummy",
            "CNI_ARGS": "",
            "CNI_IFNAME": "dummy",
            "CNI_PATH": ":".join(self.bin_dirs),
        }
        stdin = json.dumps({"cniVersion": version.CURRENT}).encode()
        try:
            out = await self._exec("VERSION", plugin_type, "", env, stdin, self._limit(timeout))
        except CNIError as e:
            if "unknown CNI_COMMAND: VERSION" in e.msg:
                return VersionInfo("0.1.0", ("0.1.0",))
            raise
        try:
            obj = json.loads(out)
            versions = tuple(str(v) for v in obj.get("supportedVersions") or ())
            return VersionInfo(str(obj.get("cniVersion") or ""), versions)
        except (ValueError, AttributeError, TypeError):
            raise CNIError(
                "invalid VERSION output",
                code=DECODE_FAILURE,
                details=repr(out[:500]),
                plugin_type=plugin_type,
                verb="VERSION",
            ) from None

    # -- cache queries --------------------------------------------------------------------------

    def _read_record(self, net_name: str, rt: RuntimeConf) -> CachedAttachment | None:
        path = self._cache_path(net_name, rt)
        try:
            return cache.read(path)
        except CorruptCache as e:
            raise CNIError(f"corrupt CNI cache file: {e}", code=DECODE_FAILURE) from None

    def get_network_list_cached_config(
        self, net_name: str, rt: RuntimeConf
    ) -> tuple[NetworkConfigList | None, RuntimeConf]:
        """The config ADD used, and ``rt`` with ADD's args and capability args (R-NET-3)."""
        att = self._read_record(net_name, rt)
        if att is None or not att.config:
            return None, rt
        try:
            net = parse_network_config_list(att.config, att.path)
        except ConfigError as e:
            raise CNIError(f"cached config unusable: {e}", code=DECODE_FAILURE) from None
        return net, self._with_cached_args(rt, att)

    def get_cached_result(self, net_name: str, rt: RuntimeConf) -> Result | None:
        """The final ADD result from the cache, or None if there is none."""
        att = self._read_record(net_name, rt)
        if att is None or att.result is None:
            return None
        return parse_result(att.result)

    def get_cached_attachments(self, container_id: str = "") -> list[CachedAttachment]:
        """Every cached attachment (of ``container_id`` if given), e.g. for startup GC."""
        return cache.list_attachments(self.cache_dir, container_id)
