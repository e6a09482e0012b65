"""The container RPC families, one module each."""

from crishim.server.container_create import ContainerCreateMixin
from crishim.server.container_exec_sync import ContainerExecSyncMixin
from crishim.server.container_list import ContainerListMixin
from crishim.server.container_log_reopen import ContainerLogReopenMixin
from crishim.server.container_remove import ContainerRemoveMixin
from crishim.server.container_start import ContainerStartMixin
from crishim.server.container_status import ContainerStatusMixin
from crishim.server.container_stop import ContainerStopMixin
from crishim.server.container_update_resources import ContainerUpdateResourcesMixin

ContainerMixins = (ContainerCreateMixin, ContainerStartMixin, ContainerStopMixin,
                   ContainerRemoveMixin, ContainerStatusMixin, ContainerListMixin,
                   ContainerUpdateResourcesMixin, ContainerExecSyncMixin, ContainerLogReopenMixin)
