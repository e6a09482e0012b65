"""The domain facade the servicers call: it owns the managers and their start-up and shutdown order."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crishim.config import Config
from crishim.container.manager import ContainerManager
from crishim.container.oci import make_runtimes
from crishim.events import LifecycleEvents
from crishim.image import ImageManager
from crishim.network.manager import NetworkManager
from crishim.sandbox.manager import SandboxManager
from crishim.stats import StatsCollector
from crishim.store import RUN_DIR, Syncer, private_dir
from crishim.streaming.server import StreamingServer
from crishim.telemetry import MetricsServer, observe_recovery, track_states

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkStatus:
    ready: bool
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        containers_run = Path(config.run_dir) / "containers"
        runtimes = make_runtimes(containers_run, config.runtime.runc_path, config.runtime.crun_path)
        self.handlers = set(runtimes)
        self.images = ImageManager(root=Path(config.state_dir) / "images",
                                   registry_config_dir=config.images.registry_config_dir,
                                   pull_progress_timeout=config.images.pull_progress_timeout)
        self.syncer = Syncer()  # one group commit for sandbox records and CNI cache files
        self.network = NetworkManager(config.cni, self.syncer)
        self.sandboxes = SandboxManager(config, self.network, self.handlers, self.syncer)
        self.containers = ContainerManager(
            root=Path(config.state_dir) / "containers", run_dir=containers_run, runtimes=runtimes,
            conmon_path=config.runtime.conmon_path, rootfs=self.images,
            default_handler=config.runtime.default_handler, idmap_root=Path(config.run_dir) / "idmap")
        self.sandboxes.containers = self.containers
        self.images.set_in_use_checker(self.containers.image_in_use)
        self.stats = StatsCollector(self.containers)
        self.events = LifecycleEvents(self.sandboxes.get, self.containers.containers_of)
        self.sandboxes.on_change = self.events.sandbox_changed
        self.containers.on_change = self.events.container_changed
        self.streaming = StreamingServer(config.streaming, self.containers, self.sandboxes)
        self.metrics = MetricsServer(config.metrics.address)
        track_states("sandboxes", lambda: [s.state.value for s in self.sandboxes.list()])
        track_states("containers", lambda: [c.state.value for c in self.containers.list_containers()])

    async def start(self) -> None:
        """Recover state left by an earlier process before the socket accepts calls."""
        await asyncio.to_thread(self._private_dirs)
        self.syncer.start()
        with observe_recovery():
            await self.images.start()
            await self.network.start()
            await self.containers.recover()
            await self.sandboxes.recover()
        await asyncio.to_thread(private_dir, self.sandboxes.pod_root)  # its tmpfs brings its own mode
        await self.streaming.start()
        await self.metrics.start()

    def _private_dirs(self) -> None:
        """Root-only state (see crishim.store.private), set before anything is written there."""
        private_dir(Path(self.config.state_dir))
        private_dir(Path(self.config.run_dir), RUN_DIR)
        for path in (self.containers.run_dir, self.sandboxes.pod_root):
            private_dir(path)

    async def close(self) -> None:
        """Stop background work; pods and containers keep running."""
        await self.streaming.close()
        await self.metrics.close()
        await self.containers.close()
        await self.sandboxes.close()
        await self.network.close()
        await self.images.close()
        await self.syncer.close()

    async def network_status(self) -> NetworkStatus:
        ready, message, info = await self.network.status()
        return NetworkStatus(ready=ready, message=message, info=info)

    async def update_pod_cidr(self, pod_cidr: str) -> None:
        await self.network.set_pod_cidr(pod_cidr)
