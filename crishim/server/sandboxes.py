"""The pod sandbox RPC families, one module each."""

from crishim.server.sandbox_list import SandboxListMixin
from crishim.server.sandbox_remove import SandboxRemoveMixin
from crishim.server.sandbox_run import SandboxRunMixin
from crishim.server.sandbox_status import SandboxStatusMixin
from crishim.server.sandbox_stop import SandboxStopMixin

SandboxMixins = (SandboxRunMixin, SandboxStopMixin, SandboxRemoveMixin, SandboxStatusMixin,
                 SandboxListMixin)
