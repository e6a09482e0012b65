"""``python -m cni``: a cnitool work-alike for trying networks by hand.

NETCONFPATH=/etc/cni/net.d CNI_PATH=/usr/lib/cni python -m cni add mynet /run/netns/test
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import Sequence

from cni.api import CNIConfig, RuntimeConf
from cni.config import load_conf_dir
from cni.errors import CNIError

USAGE = """\
usage: python -m cni add|del|check|status|gc|version NETNAME [NETNS]

Runs the plugins of network NETNAME (a config in $NETCONFPATH) like cnitool.
  add/del/check need NETNS (a netns path such as /run/netns/NAME); del accepts "" (netns gone).
  status, gc and version take only NETNAME. gc DELs every cached attachment of the network.
Environment:
  NETCONFPATH  config dir (default /etc/cni/net.d)
  CNI_PATH     plugin dirs separated by ':' (default /opt/cni/bin:/usr/lib/cni)
  CNI_IFNAME   interface name (default eth0)
  CNI_ARGS     K=V;K=V passed to the plugins
  CAP_ARGS     JSON object of capability args (runtimeConfig), e.g. {"portMappings": [...]}
  CNI_CONTAINERID  container id (default derived from NETNS, like cnitool)
  CNI_CACHE_DIR    result cache dir (default /var/lib/cni)
"""

VERBS = ("add", "del", "check", "status", "gc", "version")


class UsageError(Exception):
    """Bad command line or environment; the message says what to fix."""


def _parse_args(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"CNI_ARGS: {item!r} is not KEY=VALUE")
        pairs.append((key, value))
    return tuple(pairs)


def _runtime_conf(netns: str) -> RuntimeConf:
    caps_text = os.environ.get("CAP_ARGS", "")
    try:
        caps = json.loads(caps_text) if caps_text else {}
    except json.JSONDecodeError as e:
        raise UsageError(f"CAP_ARGS is not valid JSON: {e}") from None
    if not isinstance(caps, dict):
        raise UsageError("CAP_ARGS must be a JSON object")
    cid = os.environ.get("CNI_CONTAINERID") or ("cnitool-" + hashlib.sha512(netns.encode()).hexdigest()[:12])
    return RuntimeConf(
        container_id=cid,
        netns=netns,
        ifname=os.environ.get("CNI_IFNAME") or "eth0",
        args=_parse_args(os.environ.get("CNI_ARGS", "")),
        capability_args=caps,
    )


async def _main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or argv[0] not in VERBS:
        raise UsageError("expected a verb and a network name")
    verb, name = argv[0], argv[1]
    needs_netns = verb in ("add", "del", "check")
    if needs_netns and len(argv) != 3:
        raise UsageError(f"{verb} needs NETNAME and NETNS")
    if not needs_netns and len(argv) != 2:
        raise UsageError(f"{verb} takes only NETNAME")
    conf_dir = os.environ.get("NETCONFPATH") or "/etc/cni/net.d"
    loaded = await asyncio.to_thread(load_conf_dir, conf_dir, name)
    if loaded.default is None:
        raise UsageError(loaded.error_message())
    net = loaded.default
    bin_dirs = (os.environ.get("CNI_PATH") or "/opt/cni/bin:/usr/lib/cni").split(":")
    cni = CNIConfig([d for d in bin_dirs if d], cache_dir=os.environ.get("CNI_CACHE_DIR") or "/var/lib/cni")
    if verb == "add":
        result = await cni.add_network_list(net, _runtime_conf(argv[2]))
        print(json.dumps(result.to_version(net.cni_version), indent=2))
    elif verb == "del":
        await cni.del_network_list(net, _runtime_conf(argv[2]))
    elif verb == "check":
        await cni.check_network_list(net, _runtime_conf(argv[2]))
    elif verb == "status":
        await cni.get_status_network_list(net)
    elif verb == "gc":
        await cni.gc_network_list(net, [])
    else:
        infos = {}
        for plugin in net.plugins:
            info = await cni.get_version_info(plugin.type)
            infos[plugin.type] = {
                "cniVersion": info.cni_version,
                "supportedVersions": list(info.supported_versions),
            }
        print(json.dumps(infos, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 on success, 1 on a CNI failure (error JSON on stdout), 2 on usage errors."""
    try:
        return asyncio.run(_main(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        print(f"error: {e}\n\n{USAGE}", file=sys.stderr, end="")
        return 2
    except CNIError as e:
        print(json.dumps({"code": e.code, "msg": e.msg, "details": e.details}), file=sys.stdout)
        print(f"error: {e}", file=sys.stderr)
        for note in getattr(e, "__notes__", ()):
            print(f"  {note}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
