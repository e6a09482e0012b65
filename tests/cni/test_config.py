"""Pure config parsing and conf-dir selection (R-CNI-1, R-CNI-2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cni import ConfigError, load_conf_dir, parse_network_config, parse_network_config_list


def _list(**kw: object) -> bytes:
    doc = {"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "bridge"}], **kw}
    return json.dumps(doc).encode()


def test_conflist_keeps_unknown_keys_and_capabilities() -> None:
    data = _list(
        plugins=[
            {"type": "bridge", "x-custom": {"a": 1}},
            {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}},
        ]
    )
    net = parse_network_config_list(data, "/etc/cni/net.d/10.conflist")
    assert (net.name, net.cni_version, net.source) == ("net", "1.0.0", "/etc/cni/net.d/10.conflist")
    assert net.plugins[0].raw["x-custom"] == {"a": 1}
    assert net.plugins[1].capabilities == frozenset({"portMappings"})
    assert net.raw_bytes == data
    assert not net.disable_check and not net.disable_gc


def test_single_conf_is_upconverted() -> None:
    net = parse_network_config(b'{"cniVersion":"0.3.1","name":"lo","type":"loopback","k":1}')
    assert (net.name, net.cni_version, len(net.plugins)) == ("lo", "0.3.1", 1)
    assert net.plugins[0].raw["k"] == 1
    assert json.loads(net.raw_bytes)["plugins"][0]["type"] == "loopback"


def test_cni_versions_picks_highest_supported() -> None:
    net = parse_network_config_list(_list(cniVersion="0.4.0", cniVersions=["1.0.0", "9.9.9"]))
    assert net.cni_version == "1.0.0"
    with pytest.raises(ConfigError, match="no supported CNI version"):
        parse_network_config_list(_list(cniVersion="2.0.0"))


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("TRUE", True), ("false", False)])
def test_disable_flags_accept_bool_strings(value: object, expected: bool) -> None:
    net = parse_network_config_list(_list(disableCheck=value, disableGC=value))
    assert net.disable_check is expected and net.disable_gc is expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (_list(name="bad name"), "invalid network name"),
        (_list(name=""), 'missing network "name"'),
        (_list(plugins=[{"type": "../bin/evil"}]), "invalid plugin type"),
        (_list(plugins=[{"bridge": "x"}]), r'plugins\[0\]: missing plugin "type"'),
        (_list(plugins=[]), "empty"),
        (_list(disableCheck="maybe"), "must be a boolean"),
        (_list(cniVersion="1.0"), "invalid CNI version"),
        (b'{"cniVersion":"1.0.0","name":"n","type":"bridge"}', "belongs in a .conf"),
        (json.dumps({"name": "n", "plugins": [{"type": "x"}]}).encode(), 'missing "cniVersion"'),
    ],
)
def test_invalid_lists_are_rejected_with_reason(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_network_config_list(data, "f.conflist")


def test_conflist_saved_as_conf_is_explained() -> None:
    with pytest.raises(ConfigError, match=r"rename it to \.conflist"):
        parse_network_config(_list(), "x.conf")


def test_conf_dir_first_valid_in_lexical_order(tmp_path: Path) -> None:
    (tmp_path / "05-broken.conflist").write_text("{")
    (tmp_path / "10-b.conflist").write_bytes(_list(name="b"))
    (tmp_path / "20-a.conf").write_text('{"cniVersion":"1.0.0","name":"a","type":"bridge"}')
    (tmp_path / "00-ignored.txt").write_text("x")
    (tmp_path / "01-dir.conf").mkdir()
    load = load_conf_dir(str(tmp_path))
    assert load.default is not None and load.default.name == "b"
    assert [p for p, _ in load.skipped] == [str(tmp_path / "05-broken.conflist")]
    assert load.error_message() == ""
    by_name = load_conf_dir(str(tmp_path), "a")
    assert by_name.default is not None and by_name.default.source.endswith("20-a.conf")


def test_conf_dir_error_names_dir_and_reasons(tmp_path: Path) -> None:
    (tmp_path / "10.conflist").write_bytes(_list(name="bad name"))
    load = load_conf_dir(str(tmp_path))
    assert load.default is None
    msg = load.error_message()
    assert str(tmp_path) in msg and "10.conflist" in msg and "invalid network name" in msg
    missing = load_conf_dir(str(tmp_path / "nope"))
    assert missing.default is None and missing.skipped == ()
    assert "no valid network config found" in missing.error_message()
