"""Network configuration files: pure parsing and validation, conf-dir discovery (R-CNI-1/2)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cni import version
from cni.errors import ConfigError

CONF_EXTENSIONS = (".conf", ".conflist", ".json")

# libcni pkg/utils: network names and container IDs share this pattern.
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


@dataclass(frozen=True)
class PluginConf:
    """One plugin object of a list; ``raw`` keeps every key so unknown ones reach the plugin."""

    type: str
    raw: dict[str, Any]
    capabilities: frozenset[str]


@dataclass(frozen=True)
class NetworkConfigList:
    """A network: the plugins run in order on ADD (reverse on DEL) under one name and version."""

    name: str
    cni_version: str
    plugins: tuple[PluginConf, ...]
    disable_check: bool
    disable_gc: bool
    source: str
    raw_bytes: bytes


def _load_object(data: bytes, source: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{source}: not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _read_bool(obj: Mapping[str, Any], key: str, source: str) -> bool:
    """libcni accepts booleans and the strings "true"/"false" in any case."""
    value = obj.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f'{source}: "{key}" must be a boolean, got {value!r}')


def _select_version(obj: Mapping[str, Any], source: str) -> str:
    """Pick the highest of ``cniVersion`` and ``cniVersions`` that we support (libcni rule)."""
    candidates: list[str] = []
    single = obj.get("cniVersion")
    if single is not None:
        if not isinstance(single, str):
            raise ConfigError(f'{source}: "cniVersion" must be a string, got {single!r}')
        candidates.append(single)
    many = obj.get("cniVersions")
    if many is not None:
        if not isinstance(many, list) or not all(isinstance(v, str) for v in many):
            raise ConfigError(f'{source}: "cniVersions" must be a list of strings, got {many!r}')
        candidates.extend(many)
    if not candidates:
        raise ConfigError(f'{source}: missing "cniVersion" (or "cniVersions")')
    usable = []
    for v in candidates:
        try:
            parsed = version.parse(v)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
        if parsed <= version.parse(version.CURRENT):
            usable.append((parsed, v))
    if not usable:
        raise ConfigError(
            f"{source}: no supported CNI version among {candidates} (this library supports up to "
            f"{version.CURRENT})"
        )
    return max(usable)[1]


def _validate_name(name: Any, source: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f'{source}: missing network "name"')
    if not NAME_RE.match(name):
        raise ConfigError(
            f"{source}: invalid network name {name!r}: must match {NAME_RE.pattern} "
            "(letters, digits, '_', '.', '-'; not starting with a punctuation character)"
        )
    return name


def _plugin(obj: Any, source: str, index: int) -> PluginConf:
    where = f"{source}: plugins[{index}]"
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    ptype = obj.get("type")
    if not isinstance(ptype, str) or not ptype:
        raise ConfigError(f'{where}: missing plugin "type"')
    if "/" in ptype or ptype in (".", ".."):
        raise ConfigError(f"{where}: invalid plugin type {ptype!r}: must be a file name, no path")
    caps = obj.get("capabilities", {})
    if not isinstance(caps, dict):
        raise ConfigError(f'{where}: "capabilities" must be an object, got {caps!r}')
    return PluginConf(type=ptype, raw=obj, capabilities=frozenset(k for k, v in caps.items() if v is True))


def parse_network_config_list(data: bytes, source: str = "<bytes>") -> NetworkConfigList:
    """Parse and validate a ``.conflist`` (pure: no I/O, raises :class:`ConfigError`)."""
    obj = _load_object(data, source)
    name = _validate_name(obj.get("name"), source)
    cni_version = _select_version(obj, source)
    plugins = obj.get("plugins")
    if not isinstance(plugins, list):
        if "type" in obj:
            raise ConfigError(
                f'{source}: no "plugins" list; this looks like a single-plugin config, '
                "which belongs in a .conf file"
            )
        raise ConfigError(f'{source}: missing "plugins" list')
    if not plugins:
        raise ConfigError(f'{source}: "plugins" list is empty')
    return NetworkConfigList(
        name=name,
        cni_version=cni_version,
        plugins=tuple(_plugin(p, source, i) for i, p in enumerate(plugins)),
        disable_check=_read_bool(obj, "disableCheck", source),
        disable_gc=_read_bool(obj, "disableGC", source),
        source=source,
        raw_bytes=data,
    )


def parse_network_config(data: bytes, source: str = "<bytes>") -> NetworkConfigList:
    """Parse a single-plugin ``.conf``/``.json`` and up-convert it to a one-plugin list.

    Requiring ``type`` catches a conflist saved with the wrong extension.
    """
    obj = _load_object(data, source)
    if "type" not in obj:
        hint = ' (it has a "plugins" list: rename it to .conflist)' if "plugins" in obj else ""
        raise ConfigError(f'{source}: missing plugin "type"{hint}')
    listed: dict[str, Any] = {"name": obj.get("name"), "plugins": [obj]}
    for key in ("cniVersion", "cniVersions", "disableCheck", "disableGC"):
        if key in obj:
            listed[key] = obj[key]
    return parse_network_config_list(json.dumps(listed).encode(), source)


def parse_file_bytes(data: bytes, path: str) -> NetworkConfigList:
    """Dispatch on the file extension the way libcni does."""
    if path.endswith(".conflist"):
        return parse_network_config_list(data, path)
    return parse_network_config(data, path)


@dataclass(frozen=True)
class ConfDirLoad:
    """Outcome of scanning a conf dir: the chosen network and why other files were skipped."""

    default: NetworkConfigList | None
    skipped: tuple[tuple[str, str], ...]
    conf_dir: str
    wanted_name: str | None = None

    def error_message(self) -> str:
        """Text for NetworkReady=false / doctor output; empty when a network was found."""
        if self.default is not None:
            return ""
        what = f'network "{self.wanted_name}"' if self.wanted_name else "network config"
        text = f"no valid {what} found in {self.conf_dir}"
        if self.skipped:
            reasons = "; ".join(f"{path}: {reason}" for path, reason in self.skipped)
            text += f" (skipped {reasons})"
        return text


def conf_files(conf_dir: str) -> list[str]:
    """Config files of ``conf_dir`` in lexical order; a missing dir is simply empty (libcni)."""
    try:
        entries = list(os.scandir(conf_dir))
    except FileNotFoundError:
        return []
    return sorted(
        e.path for e in entries if os.path.splitext(e.name)[1] in CONF_EXTENSIONS and not e.is_dir()
    )


def load_conf_dir(conf_dir: str, default_name: str | None = None) -> ConfDirLoad:
    """Return the first valid config (or the first valid one named ``default_name``).

    Invalid files are skipped with their reason kept (CRI-O behaviour, R-CNI-1) instead of failing
    the whole load like containerd does. Blocking: call through ``asyncio.to_thread`` on a server.
    """
    skipped: list[tuple[str, str]] = []
    for path in conf_files(conf_dir):
        try:
            with open(path, "rb") as f:
                data = f.read()
            net = parse_file_bytes(data, path)
        except OSError as e:
            skipped.append((path, f"cannot read: {e.strerror or e}"))
            continue
        except ConfigError as e:
            skipped.append((path, str(e).removeprefix(f"{path}: ")))
            continue
        if default_name is not None and net.name != default_name:
            continue
        return ConfDirLoad(net, tuple(skipped), conf_dir, default_name)
    return ConfDirLoad(None, tuple(skipped), conf_dir, default_name)
