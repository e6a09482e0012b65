"""Per-registry settings: one TOML file per registry host in `images.registry_config_dir`.

The file is named after the host as it appears in image references, port included:
`registry.k8s.io.toml`, `docker.io.toml`, `127.0.0.1:5000.toml`. Keys (all optional):

    mirrors = ["http://127.0.0.1:5000"]  # endpoints tried in order before the registry itself
    plain_http = false   # talk HTTP instead of HTTPS to the registry (default true for loopback hosts)
    skip_verify = false  # accept any TLS certificate (mirrors and registry)
    ca_file = "/etc/crishim/certs/my-ca.pem"  # extra PEM CA bundle; relative to this file's directory

A mirror serves the same repository paths as the registry (`/v2/<repo>/...`); an image pulled through a
mirror keeps its original name. Files are re-read on every pull so edits need no restart. A broken file
(unreadable, not TOML, a wrong key or type, a `ca_file` that is missing or holds no PEM certificate) fails
the pull with FAILED_PRECONDITION naming the file: it is the node's configuration that is wrong, not the
request.
"""

from __future__ import annotations

import ipaddress
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from crishim.errors import FailedPrecondition

_KEYS = {"mirrors": list, "plain_http": bool, "skip_verify": bool, "ca_file": str}
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"


@dataclass(frozen=True)
class Endpoint:
    """One place to fetch a registry's content from: `url` is `scheme://host[:port]`."""

    url: str
    verify: ssl.SSLContext | bool
    is_mirror: bool


@dataclass
class HostConfig:
    host: str
    mirrors: list[str] = field(default_factory=list)
    plain_http: bool | None = None
    verify: ssl.SSLContext | bool = True  # built when the file is read: loading a CA file blocks

    def endpoints(self) -> list[Endpoint]:
        """Mirrors first, then the registry itself."""
        found = [Endpoint(url=url.rstrip("/"), verify=self.verify, is_mirror=True) for url in self.mirrors]
        plain = _is_loopback(self.host) if self.plain_http is None else self.plain_http
        upstream = DOCKER_HUB_ENDPOINT if self.host == "docker.io" else self.host
        found.append(Endpoint(url=f"{'http' if plain else 'https'}://{upstream}", verify=self.verify,
                              is_mirror=False))
        return found


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RegistryConfigError(FailedPrecondition):
    """A registries.d file cannot be used; the message names the file and what is wrong with it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"registry config {path}: {problem}")


def _check(path: Path, host: str, data: dict[str, Any]) -> HostConfig:
    for key, value in data.items():
        if key not in _KEYS:
            raise RegistryConfigError(path, f"unknown key {key!r} (known: {', '.join(sorted(_KEYS))})")
        if not isinstance(value, _KEYS[key]):
            raise RegistryConfigError(path, f"{key} must be a {_KEYS[key].__name__}, "
                                            f"not {type(value).__name__} {value!r}")
    mirrors = data.get("mirrors", [])
    for i, url in enumerate(mirrors):
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryConfigError(path, f"mirrors[{i}] {url!r} must be an http:// or https:// URL")
    verify: ssl.SSLContext | bool = not data.get("skip_verify", False)
    if verify and data.get("ca_file"):
        verify = _ca_context(path, data["ca_file"])
    return HostConfig(host=host, mirrors=list(mirrors), plain_http=data.get("plain_http"), verify=verify)


def _ca_context(path: Path, ca_file: str) -> ssl.SSLContext:
    """The default trust store plus the certificates of `ca_file` (relative to the file's directory)."""
    ca_path = path.parent / ca_file
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=ca_path)
    except FileNotFoundError as exc:
        raise RegistryConfigError(path, f"ca_file {ca_path} does not exist") from exc
    except ssl.SSLError as exc:  # before OSError, its base class
        raise RegistryConfigError(path, f"ca_file {ca_path} holds no usable PEM certificate "
                                        f"({exc.reason or exc})") from exc
    except OSError as exc:  # a directory, no permission
        raise RegistryConfigError(path, f"ca_file {ca_path} cannot be read: {exc.strerror or exc}") \
            from exc
    return context


def load_host_config(config_dir: Path | None, host: str) -> HostConfig:
    """The settings for `host`; a missing file means defaults, a broken one an error naming the file."""
    if config_dir is None:
        return HostConfig(host=host)
    path = config_dir / f"{host}.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return HostConfig(host=host)
    except OSError as exc:
        raise RegistryConfigError(path, f"cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise RegistryConfigError(path, f"not UTF-8 text: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryConfigError(path, f"not valid TOML: {exc}") from exc
    return _check(path, host, data)
