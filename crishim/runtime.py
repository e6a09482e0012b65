"""The domain facade the servicers call: it owns the managers and their start-up and shutdown order."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crishim.config import Config
from crishim.image import ImageManager
from crishim.network.manager import NetworkManager
from crishim.sandbox.manager import SandboxManager

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkStatus:
    ready: bool
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.handlers = {"runc", "crun"}
        self.network = NetworkManager(config.cni)
        self.sandboxes = SandboxManager(config, self.network, self.handlers)
        self.images = ImageManager(root=Path(config.state_dir) / "images",
                                   registry_config_dir=config.images.registry_config_dir)

    async def start(self) -> None:
        """Recover state left by an earlier process before the socket accepts calls."""
        await self.images.start()
        await self.network.start()
        await self.sandboxes.recover()

    async def close(self) -> None:
        """Stop background work; pods and containers keep running."""
        await self.sandboxes.close()
        await self.network.close()
        await self.images.close()

    async def network_status(self) -> NetworkStatus:
        ready, message, info = await self.network.status()
        return NetworkStatus(ready=ready, message=message, info=info)

    async def update_pod_cidr(self, pod_cidr: str) -> None:
        await self.network.set_pod_cidr(pod_cidr)
