"""The streaming RPC families (Exec, Attach, PortForward), one module each."""

from crishim.server.container_attach import ContainerAttachMixin
from crishim.server.container_exec import ContainerExecMixin
from crishim.server.sandbox_portforward import SandboxPortForwardMixin

StreamingMixins: tuple[type, ...] = (ContainerExecMixin, ContainerAttachMixin, SandboxPortForwardMixin)
