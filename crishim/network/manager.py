"""The network plugin of crishim: kubelet's SetUpPod / TearDownPod over the `cni` library.

It keeps the default network loaded (first valid file of the conf dir, reloaded on change), tells Status
whether the network is ready, and records every plugin call of a pod for its timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cni
from crishim.config import CNISection
from crishim.network import template
from crishim.network.podnet import POD_IFNAME, Attachment
from crishim.network.watch import DirWatcher
from crishim.sandbox.model import PluginTiming
from crishim.store import Syncer
from crishim.telemetry import observe_cni_call

log = logging.getLogger(__name__)

# Teardown after a failed or interrupted set-up gets its own deadline, not the caller's (R-SBX-2).
TEARDOWN_TIMEOUT = 60.0

_timeline: contextvars.ContextVar[list[PluginTiming] | None] = contextvars.ContextVar(
    "crishim_cni_timeline", default=None)


@dataclass
class LoadState:
    load: cni.ConfDirLoad | None = None
    error: str = "CNI configuration not loaded yet"
    loaded_at: float = 0.0
    history: list[str] = field(default_factory=list)


def _record_call(call: cni.PluginCall) -> None:
    observe_cni_call(call)
    timeline = _timeline.get()
    if timeline is not None:
        timeline.append(PluginTiming(verb=call.verb, plugin_type=call.plugin_type,
                                     started=call.started, duration=call.duration,
                                     error=str(call.error) if call.error else ""))


@contextlib.contextmanager
def recording(timeline: list[PluginTiming]) -> Iterator[None]:
    """Collect the plugin calls made by this task (and the tasks it starts) into `timeline`."""
    token = _timeline.set(timeline)
    try:
        yield
    finally:
        _timeline.reset(token)


class NetworkManager:
    def __init__(self, cfg: CNISection, syncer: Syncer) -> None:
        self.cfg = cfg
        self.cni = cni.CNIConfig(cfg.bin_dirs, cache_dir=cfg.cache_dir, timeout=cfg.plugin_timeout,
                                 observer=_record_call, exec_prefix=cfg.exec_prefix,
                                 rollback_failed_add=False, cache_synced_by=syncer.mark)
        self.state = LoadState()
        self._watcher: DirWatcher | None = None
        self._reload_lock = asyncio.Lock()
        self._loaded = asyncio.Event()

    async def start(self) -> None:
        await self.reload()
        self._watcher = DirWatcher([self.cfg.conf_dir, *self.cfg.bin_dirs], self.reload,
                                   self.cfg.rescan_interval)
        self._watcher.start()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()

    @property
    def network(self) -> cni.NetworkConfigList | None:
        return self.state.load.default if self.state.load else None

    async def reload(self) -> None:
        """Load the conf dir off the event loop; the swap itself is atomic, so ADDs never wait on it."""
        async with self._reload_lock:
            load, error = await asyncio.to_thread(self._load)
            if load.default is not None and not error:
                self._loaded.set()
            previous = self.network
            self.state = LoadState(load=load, error=error, loaded_at=time.time(),
                                   history=self.state.history[-9:])
            summary = (f"loaded {load.default.name} from {load.default.source}" if load.default
                       else f"no network: {error}")
            self.state.history.append(f"{time.strftime('%H:%M:%S')} {summary}")
            if previous is None or load.default is None or previous.raw_bytes != load.default.raw_bytes:
                log.info("CNI configuration", extra={"result": summary, "error": error})

    def _load(self) -> tuple[cni.ConfDirLoad, str]:
        """Blocking: the conf dir, and why its network cannot be used ("" when it can)."""
        load = cni.load_conf_dir(self.cfg.conf_dir, self.cfg.default_network or None)
        error = load.error_message() if load.default is None else self._missing_plugins(load.default)
        return load, error

    async def wait_loaded(self) -> None:
        """Return once a usable network has been loaded."""
        await self._loaded.wait()

    def _missing_plugins(self, net: cni.NetworkConfigList) -> str:
        missing = []
        for plugin in net.plugins:
            try:
                cni.find_in_path(plugin.type, self.cfg.bin_dirs)
            except cni.CNIError:
                missing.append(plugin.type)
        if missing:
            return (f"network {net.name} ({net.source}) needs plugin(s) {', '.join(missing)}, "
                    f"not found in {':'.join(self.cfg.bin_dirs)}")
        return ""

    def not_ready_reason(self) -> str:
        """Why pods cannot get a network right now ("" when they can), from the last load, without exec."""
        if self.network is None or self.state.error:
            return self.state.error or "no network loaded"
        return ""

    async def status(self) -> tuple[bool, str, dict[str, Any]]:
        """(ready, message, verbose info); runs CNI STATUS for networks that support it."""
        net = self.network
        info: dict[str, Any] = {
            "confDir": self.cfg.conf_dir,
            "binDirs": self.cfg.bin_dirs,
            "network": net.name if net else None,
            "source": net.source if net else None,
            "skipped": [{"file": path, "reason": reason}
                        for path, reason in (self.state.load.skipped if self.state.load else ())],
            "loadedAt": self.state.loaded_at,
            "lastLoad": self.state.history,
        }
        if net is None or self.state.error:
            info["error"] = self.state.error
            return False, self.state.error, info
        try:
            await self.cni.get_status_network_list(net)
        except cni.CNIError as exc:
            info["error"] = str(exc)
            return False, f"network {net.name}: {exc}", info
        return True, "", info

    def _runtime_conf(self, att: Attachment) -> cni.RuntimeConf:
        return cni.RuntimeConf(container_id=att.sandbox_id, netns=att.netns, ifname=POD_IFNAME,
                               args=att.args, capability_args=att.capability_args)

    async def set_up(self, att: Attachment, timeline: list[PluginTiming]
                     ) -> tuple[cni.NetworkConfigList, cni.Result]:
        net = self.network
        if net is None or self.state.error:
            raise cni.CNIError(f"network plugin is not ready: {self.not_ready_reason()}")
        with recording(timeline):
            result = await self.cni.add_network_list(net, self._runtime_conf(att))
        return net, result

    async def tear_down(self, att: Attachment, network_name: str,
                        timeline: list[PluginTiming]) -> None:
        """CNI DEL with the config and arguments cached at ADD, else the current config (R-NET-3)."""
        rt = self._runtime_conf(att)
        cached, cached_rt = await asyncio.to_thread(self.cni.get_network_list_cached_config,
                                                    network_name, rt)
        net = cached or self.network
        if net is None:
            raise cni.CNIError(
                f"cannot tear down network {network_name!r}: no cached config and {self.state.error}")
        if cached is not None:
            rt = cni.RuntimeConf(container_id=att.sandbox_id, netns=att.netns, ifname=POD_IFNAME,
                                 args=cached_rt.args, capability_args=cached_rt.capability_args)
        with recording(timeline):
            await self.cni.del_network_list(net, rt, timeout=TEARDOWN_TIMEOUT)

    async def set_pod_cidr(self, pod_cidrs: str) -> None:
        """Render the configured template for kubelet's pod CIDR, unless a network already works."""
        if pod_cidrs:
            template.parse_pod_cidrs(pod_cidrs)  # refused whether or not a template is rendered
        if not pod_cidrs or not self.cfg.conf_template or (self.network and not self.state.error):
            return
        template_text = await asyncio.to_thread(Path(self.cfg.conf_template).read_text)
        text = template.render(template_text, pod_cidrs)
        path = await asyncio.to_thread(template.write_rendered, self.cfg.conf_dir, text)
        log.info("rendered the CNI template for the pod CIDR", extra={"pod_cidr": pod_cidrs,
                                                                       "path": str(path)})
        await self.reload()

    async def garbage_collect(self, valid_sandbox_ids: Callable[[], list[str]]) -> None:
        """Release attachments no known sandbox owns (a crash between ADD and the record).

        The library reads the valid set only once GC runs alone, so an ADD that finished just before
        cannot be mistaken for garbage.
        """
        net = self.network
        if net is None:
            return
        await self.cni.gc_network_list(net, lambda: [(sid, POD_IFNAME) for sid in valid_sandbox_ids()])
