"""Result parsing and conversion between spec versions (R-CNI-11)."""

from __future__ import annotations

import ipaddress

import pytest

from cni import CNIError, parse_result

RESULT_040 = {
    "cniVersion": "0.4.0",
    "interfaces": [{"name": "cni0", "mac": "aa"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
    "ips": [
        {"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
        {"version": "6", "address": "fd00::5/64", "interface": 1},
        {"version": "4", "address": "10.2.0.5/24"},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0"}],
    "dns": {"nameservers": ["10.1.0.1"], "search": ["svc"]},
}


def test_parse_040_and_ips_of_interface() -> None:
    r = parse_result(RESULT_040)
    assert r.cni_version == "0.4.0"
    assert r.ips[0].address == ipaddress.ip_interface("10.1.0.5/24")
    assert r.ips[0].gateway == ipaddress.ip_address("10.1.0.1")
    assert [str(i.address) for i in r.ips_of_interface("eth0")] == [
        "10.1.0.5/24",
        "fd00::5/64",
        "10.2.0.5/24",
    ]
    assert [str(i.address) for i in r.ips_of_interface("cni0", "eth0")] == []
    assert r.dns.nameservers == ("10.1.0.1",)


def test_convert_to_100_drops_ip_version_and_back() -> None:
    out = parse_result(RESULT_040).to_version("1.0.0")
    assert out["cniVersion"] == "1.0.0"
    assert all("version" not in ip for ip in out["ips"])
    back = parse_result(out).to_version("0.3.1")
    assert [ip["version"] for ip in back["ips"]] == ["4", "6", "4"]


def test_convert_to_and_from_020() -> None:
    old = parse_result(RESULT_040).to_version("0.2.0")
    assert old["ip4"] == {
        "ip": "10.1.0.5/24",
        "gateway": "10.1.0.1",
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
    }
    assert old["ip6"]["ip"] == "fd00::5/64"
    r = parse_result(old)
    assert [str(i.address) for i in r.ips] == ["10.1.0.5/24", "fd00::5/64"]
    assert r.ips_of_interface("eth0") == list(r.ips)


def test_110_route_fields_only_in_110() -> None:
    data = {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "socketPath": "/s"}],
        "routes": [{"dst": "10.0.0.0/8", "mtu": 1400, "table": 100}],
    }
    r = parse_result(data)
    assert r.routes[0].mtu == 1400 and r.interfaces[0].socket_path == "/s"
    assert r.to_version("1.1.0")["routes"] == [{"dst": "10.0.0.0/8", "mtu": 1400, "table": 100}]
    assert r.to_version("1.0.0")["routes"] == [{"dst": "10.0.0.0/8"}]
    assert "socketPath" not in r.to_version("1.0.0")["interfaces"][0]


def test_missing_version_uses_hint_and_null_is_empty() -> None:
    assert parse_result(b'{"ips":[{"address":"10.0.0.2/8"}]}', "1.0.0").cni_version == "1.0.0"
    assert parse_result(b"null", "0.4.0").ips == ()


@pytest.mark.parametrize(
    "data",
    [b"garbage", b"[1]", b'{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.300/8"}]}'],
)
def test_bad_results_raise_decode_error(data: bytes) -> None:
    with pytest.raises(CNIError) as exc:
        parse_result(data)
    assert exc.value.code == 6
