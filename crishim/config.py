"""crishim's configuration: a TOML file (`/etc/crishim/config.toml`) overridden by command-line flags.

Every key is declared once, in the dataclasses below; the loader checks names and types against them so a
typo or a wrong type is reported with the key's full dotted name instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = "/etc/crishim/config.toml"


class ConfigError(Exception):
    """An invalid configuration; the message names the key."""


@dataclass
class CNISection:
    conf_dir: str = "/etc/cni/net.d"
    bin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])
    cache_dir: str = "/var/lib/cni"
    # A network name to use instead of the first valid file of conf_dir.
    default_network: str = ""
    # Seconds one plugin may run before it is killed.
    plugin_timeout: float = 120.0
    # Seconds between rescans of conf_dir; inotify catches most changes sooner.
    rescan_interval: float = 5.0
    # A conflist template rendered by UpdateRuntimeConfig with the pod CIDR; empty disables that.
    conf_template: str = ""
    # Command prefix the plugins run under, e.g. ["nsenter", "--net=/run/netns/node"].
    exec_prefix: list[str] = field(default_factory=list)


@dataclass
class RuntimeSection:
    # Runtime handler used when a request names none.
    default_handler: str = "runc"
    runc_path: str = "/usr/bin/runc"
    crun_path: str = "/usr/bin/crun"
    conmon_path: str = "/usr/bin/conmon"


@dataclass
class ImagesSection:
    # Directory of per-registry host files (mirrors, plain HTTP, CA), like containerd's certs.d.
    registry_config_dir: str = "/etc/crishim/registries.d"
    # Seconds a pull may receive nothing before it is given up (containerd's image_pull_progress_timeout,
    # 5m): a lack of progress, never the total time, so large layers over slow links still arrive.
    pull_progress_timeout: float = 300.0


@dataclass
class StreamingSection:
    address: str = "127.0.0.1"
    port: int = 0
    # Seconds an established exec/attach/port-forward connection may pass without a frame either way
    # before it is closed (containerd's stream_idle_timeout, 4h by default).
    idle_timeout: float = 4 * 3600.0


@dataclass
class MetricsSection:
    # host:port of the Prometheus endpoint; empty turns it off.
    address: str = ""


@dataclass
class Config:
    socket: str = "/run/crishim/crishim.sock"
    state_dir: str = "/var/lib/crishim"
    run_dir: str = "/run/crishim"
    netns_dir: str = "/var/run/netns"
    log_level: str = "info"
    log_format: str = "text"
    # Seconds in-flight RPCs get to finish on SIGTERM/SIGINT.
    shutdown_grace: float = 10.0
    # Seconds a client connection may stay without a call before crishim closes it: a CRI connection
    # without an RPC in flight (or without its HTTP/2 preface), an admin one without its request line.
    # Abandoned and stalled clients do not hold descriptors forever; kubelet and crictl reconnect by
    # themselves when they next call.
    connection_idle_timeout: float = 120.0
    cni: CNISection = field(default_factory=CNISection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    images: ImagesSection = field(default_factory=ImagesSection)
    streaming: StreamingSection = field(default_factory=StreamingSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# System directories a state_dir or run_dir must not be: crishim chmods its own to 0700 / 0711.
_SHARED_DIRS = {"/", "/run", "/var/run", "/var", "/var/lib", "/tmp", "/var/tmp", "/etc", "/usr", "/home",
                "/root", "/opt", "/srv", "/mnt"}
_LOG_LEVELS = {"debug", "info", "warning", "error"}
_LOG_FORMATS = {"text", "json"}


def _check_value(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint in (str, int, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - declaration error


def _apply(target: Any, data: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(target))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"{full}: unknown key")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a table")
            _apply(getattr(target, key), value, f"{full}.")
        elif isinstance(hint, types.UnionType):  # pragma: no cover - not used yet
            raise ConfigError(f"{full}: unsupported type")
        else:
            setattr(target, key, _check_value(full, value, hint))


def _validate(cfg: Config) -> None:
    if cfg.log_level not in _LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {sorted(_LOG_LEVELS)}, got {cfg.log_level!r}")
    if cfg.log_format not in _LOG_FORMATS:
        raise ConfigError(f"log_format: must be one of {sorted(_LOG_FORMATS)}, got {cfg.log_format!r}")
    for key in ("socket", "state_dir", "run_dir", "netns_dir"):
        if not Path(getattr(cfg, key)).is_absolute():
            raise ConfigError(f"{key}: must be an absolute path, got {getattr(cfg, key)!r}")
    for key in ("state_dir", "run_dir"):
        if os.path.normpath(getattr(cfg, key)) in _SHARED_DIRS:
            raise ConfigError(f"{key}: {getattr(cfg, key)!r} is shared with the rest of the system, and "
                              "crishim makes its dirs root-only: give it one of its own")
    if os.path.normpath(cfg.state_dir) == os.path.normpath(cfg.run_dir):
        raise ConfigError("run_dir: must differ from state_dir (one is 0711, the other 0700)")
    if not cfg.cni.bin_dirs:
        raise ConfigError("cni.bin_dirs: must name at least one directory")
    timeouts = {"connection_idle_timeout": cfg.connection_idle_timeout,
                "cni.plugin_timeout": cfg.cni.plugin_timeout,
                "images.pull_progress_timeout": cfg.images.pull_progress_timeout,
                "streaming.idle_timeout": cfg.streaming.idle_timeout}
    for key, seconds in timeouts.items():
        if seconds <= 0:
            raise ConfigError(f"{key}: must be positive")
    if not 0 <= cfg.streaming.port <= 65535:
        raise ConfigError("streaming.port: must be between 0 and 65535")


def load_config(path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read `path` (the default path may be absent; an explicit one must exist), then apply flag overrides.

    `overrides` uses dotted keys (`"cni.conf_dir"`) so flags and file share one validation.
    """
    cfg = Config()
    file_path = Path(path or DEFAULT_CONFIG_PATH)
    if file_path.exists():
        try:
            data = tomllib.loads(file_path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file_path}: not valid TOML: {exc}") from exc
        _apply(cfg, data, "")
    elif path is not None:
        raise ConfigError(f"{file_path}: no such config file")
    nested: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    _apply(cfg, nested, "")
    _validate(cfg)
    return cfg
