"""What every RPC mixin can rely on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crishim.runtime import Runtime


class ServicerBase:
    """Base of the per-RPC-family mixins; `runtime` is the domain facade they call into."""

    runtime: Runtime

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
