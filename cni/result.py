"""CNI results of every spec version, normalised to 1.1.0 and convertible back (R-CNI-11)."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from cni import version
from cni.errors import DECODE_FAILURE, CNIError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Interface:
    """An interface a plugin created; ``sandbox`` is the netns path for pod-side ones."""

    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""


@dataclass(frozen=True)
class IPConfig:
    """An address; ``interface`` indexes ``Result.interfaces`` (None: no index, e.g. from IPAM)."""

    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None


@dataclass(frozen=True)
class Route:
    """A route; the optional fields exist since spec 1.1.0 and are dropped for older versions."""

    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


@dataclass(frozen=True)
class DNS:
    """Resolver settings a plugin suggests."""

    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


def _decode_error(msg: str) -> CNIError:
    return CNIError(f"invalid CNI result: {msg}", code=DECODE_FAILURE)


def _ip_interface(value: Any, what: str) -> IPInterface:
    try:
        return ipaddress.ip_interface(str(value))
    except ValueError:
        raise _decode_error(f"{what}: {value!r} is not an address in CIDR form") from None


def _ip_address(value: Any, what: str) -> IPAddress | None:
    if value in (None, ""):
        return None
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise _decode_error(f"{what}: {value!r} is not an IP address") from None


def _route(obj: Any) -> Route:
    if not isinstance(obj, dict) or "dst" not in obj:
        raise _decode_error(f"route {obj!r} has no dst")
    try:
        dst = ipaddress.ip_network(str(obj["dst"]), strict=False)
    except ValueError:
        raise _decode_error(f"route dst {obj['dst']!r} is not a network") from None
    return Route(
        dst=dst,
        gw=_ip_address(obj.get("gw"), "route gw"),
        mtu=int(obj.get("mtu") or 0),
        advmss=int(obj.get("advmss") or 0),
        priority=int(obj.get("priority") or 0),
        table=obj.get("table"),
        scope=obj.get("scope"),
    )


def _dns(obj: Any) -> DNS:
    if not isinstance(obj, dict):
        return DNS()
    return DNS(
        nameservers=tuple(obj.get("nameservers") or ()),
        domain=str(obj.get("domain") or ""),
        search=tuple(obj.get("search") or ()),
        options=tuple(obj.get("options") or ()),
    )


@dataclass(frozen=True)
class Result:
    """A successful ADD result, normalised to spec 1.1.0; ``raw`` is what the plugin printed."""

    cni_version: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)
    raw: dict[str, Any] = field(default_factory=dict)

    def ips_of_interface(self, ifname: str, default_ifname: str | None = None) -> list[IPConfig]:
        """IPs on ``ifname``; IPs without an interface index belong to ``default_ifname``.

        ``default_ifname`` defaults to ``ifname``: a result is normally asked about the interface
        its attachment was made with (containerd/go-cni rule for delegated-IPAM results).
        """
        default = ifname if default_ifname is None else default_ifname
        names: dict[int | None, str] = dict(enumerate(i.name for i in self.interfaces))
        return [ip for ip in self.ips if names.get(ip.interface, default) == ifname]

    def to_version(self, target: str) -> dict[str, Any]:
        """Serialise in spec version ``target`` (used for prevResult after a config upgrade)."""
        v = version.parse(target)
        if v < (0, 3, 0):
            return self._to_020(target)
        new = v >= (1, 1, 0)
        out: dict[str, Any] = {"cniVersion": target}
        if self.interfaces:
            out["interfaces"] = [_iface_json(i, new) for i in self.interfaces]
        if self.ips:
            out["ips"] = [_ip_json(ip, with_version=v < (1, 0, 0)) for ip in self.ips]
        if self.routes:
            out["routes"] = [_route_json(r, new) for r in self.routes]
        dns = _dns_json(self.dns)
        if dns:
            out["dns"] = dns
        return out

    def _to_020(self, target: str) -> dict[str, Any]:
        """0.1.0/0.2.0 know one IPv4 and one IPv6 config with family-specific routes."""
        out: dict[str, Any] = {"cniVersion": target}
        for key, fam in (("ip4", 4), ("ip6", 6)):
            ip = next((i for i in self.ips if i.address.version == fam), None)
            if ip is None:
                continue
            entry: dict[str, Any] = {"ip": str(ip.address)}
            if ip.gateway is not None:
                entry["gateway"] = str(ip.gateway)
            routes = [_route_json(r, False) for r in self.routes if r.dst.version == fam]
            if routes:
                entry["routes"] = routes
            out[key] = entry
        dns = _dns_json(self.dns)
        if dns:
            out["dns"] = dns
        return out


def _iface_json(i: Interface, new: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": i.name}
    if i.mac:
        out["mac"] = i.mac
    if i.mtu:
        out["mtu"] = i.mtu
    if i.sandbox:
        out["sandbox"] = i.sandbox
    if new and i.socket_path:
        out["socketPath"] = i.socket_path
    if new and i.pci_id:
        out["pciID"] = i.pci_id
    return out


def _ip_json(ip: IPConfig, with_version: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if with_version:
        out["version"] = str(ip.address.version)
    out["address"] = str(ip.address)
    if ip.gateway is not None:
        out["gateway"] = str(ip.gateway)
    if ip.interface is not None:
        out["interface"] = ip.interface
    return out


def _route_json(r: Route, new: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": str(r.dst)}
    if r.gw is not None:
        out["gw"] = str(r.gw)
    if new:
        for key, value in (("mtu", r.mtu), ("advmss", r.advmss), ("priority", r.priority)):
            if value:
                out[key] = value
        if r.table is not None:
            out["table"] = r.table
        if r.scope is not None:
            out["scope"] = r.scope
    return out


def _dns_json(d: DNS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if d.nameservers:
        out["nameservers"] = list(d.nameservers)
    if d.domain:
        out["domain"] = d.domain
    if d.search:
        out["search"] = list(d.search)
    if d.options:
        out["options"] = list(d.options)
    return out


def _parse_020(obj: dict[str, Any], ver: str) -> Result:
    ips: list[IPConfig] = []
    routes: list[Route] = []
    for key in ("ip4", "ip6"):
        entry = obj.get(key)
        if not entry:
            continue
        if not isinstance(entry, dict) or "ip" not in entry:
            raise _decode_error(f'"{key}" has no "ip"')
        ips.append(
            IPConfig(
                address=_ip_interface(entry["ip"], f"{key}.ip"),
                gateway=_ip_address(entry.get("gateway"), f"{key}.gateway"),
            )
        )
        routes.extend(_route(r) for r in entry.get("routes") or ())
    return Result(ver, (), tuple(ips), tuple(routes), _dns(obj.get("dns")), obj)


def _parse_current(obj: dict[str, Any], ver: str) -> Result:
    interfaces = []
    for i in obj.get("interfaces") or ():
        if not isinstance(i, dict) or not isinstance(i.get("name"), str):
            raise _decode_error(f"interface {i!r} has no name")
        interfaces.append(
            Interface(
                name=i["name"],
                mac=str(i.get("mac") or ""),
                mtu=int(i.get("mtu") or 0),
                sandbox=str(i.get("sandbox") or ""),
                socket_path=str(i.get("socketPath") or ""),
                pci_id=str(i.get("pciID") or ""),
            )
        )
    ips = []
    for ip in obj.get("ips") or ():
        if not isinstance(ip, dict) or "address" not in ip:
            raise _decode_error(f"ip {ip!r} has no address")
        index = ip.get("interface")
        if index is not None and not isinstance(index, int):
            raise _decode_error(f"ip interface index {index!r} is not an integer")
        ips.append(
            IPConfig(
                address=_ip_interface(ip["address"], "ips.address"),
                gateway=_ip_address(ip.get("gateway"), "ips.gateway"),
                interface=index,
            )
        )
    routes = tuple(_route(r) for r in obj.get("routes") or ())
    return Result(ver, tuple(interfaces), tuple(ips), routes, _dns(obj.get("dns")), obj)


def parse_result(data: dict[str, Any] | bytes, version_hint: str = "") -> Result:
    """Parse a result of any version 0.1.0 to 1.1.0; ``version_hint`` is used when it has none.

    The returned ``cni_version`` is the version the plugin answered in; the content is normalised.
    """
    if isinstance(data, bytes | bytearray):
        text = bytes(data).strip()
        try:
            obj = json.loads(text) if text else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _decode_error(f"not JSON: {e}") from None
    else:
        obj = data
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise _decode_error(f"expected a JSON object, got {type(obj).__name__}")
    ver = obj.get("cniVersion") or version_hint or version.CURRENT
    if not isinstance(ver, str):
        raise _decode_error(f"cniVersion {ver!r} is not a string")
    try:
        parsed = version.parse(ver)
    except ValueError as e:
        raise _decode_error(str(e)) from None
    if parsed < (0, 3, 0):
        return _parse_020(obj, ver)
    return _parse_current(obj, ver)
