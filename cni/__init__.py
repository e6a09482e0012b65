"""A CNI client library (what libcni is for Go): configs, plugin execution, results, cache.

Stand-alone: it does not depend on crishim. Typical use::

    net = load_conf_dir("/etc/cni/net.d").default
    cni = CNIConfig(["/opt/cni/bin"])
    result = await cni.add_network_list(net, RuntimeConf(sandbox_id, netns_path, "eth0"))
    ...
    await cni.del_network_list(net, RuntimeConf(sandbox_id, netns_path, "eth0"))
"""

from cni.api import (
    CNIConfig,
    PluginCall,
    RuntimeConf,
    VersionInfo,
    kubernetes_args,
    validate_runtime_conf,
)
from cni.cache import CachedAttachment
from cni.config import (
    ConfDirLoad,
    NetworkConfigList,
    PluginConf,
    load_conf_dir,
    parse_network_config,
    parse_network_config_list,
)
from cni.errors import CNIError, ConfigError
from cni.invoke import find_in_path
from cni.result import DNS, Interface, IPConfig, Result, Route, parse_result

__all__ = [
    "DNS",
    "CNIConfig",
    "CNIError",
    "CachedAttachment",
    "ConfDirLoad",
    "ConfigError",
    "IPConfig",
    "Interface",
    "NetworkConfigList",
    "PluginCall",
    "PluginConf",
    "Result",
    "Route",
    "RuntimeConf",
    "VersionInfo",
    "find_in_path",
    "kubernetes_args",
    "load_conf_dir",
    "parse_network_config",
    "parse_network_config_list",
    "parse_result",
    "validate_runtime_conf",
]
