"""`crishim doctor`: which CNI network would be used, and why every other file was skipped."""

from __future__ import annotations

import cni
from crishim.config import Config


def doctor(config: Config) -> int:
    load = cni.load_conf_dir(config.cni.conf_dir, config.cni.default_network or None)
    print(f"CNI conf dir: {config.cni.conf_dir}")
    print(f"CNI bin dirs: {':'.join(config.cni.bin_dirs)}")
    for path, reason in load.skipped:
        print(f"  skipped {path}: {reason}")
    if load.default is None:
        print(f"no usable network: {load.error_message()}")
        return 1
    net = load.default
    print(f"network {net.name!r} (cniVersion {net.cni_version}) from {net.source}")
    healthy = True
    for plugin in net.plugins:
        try:
            where = cni.find_in_path(plugin.type, config.cni.bin_dirs)
        except cni.CNIError as exc:
            where, healthy = f"MISSING: {exc}", False
        print(f"  plugin {plugin.type}: {where}")
    return 0 if healthy else 1
