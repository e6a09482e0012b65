"""Per-registry settings: one TOML file per registry host in `images.registry_config_dir`.

The file is named after the host as it appears in image references, port included:
`registry.k8s.io.toml`, `docker.io.toml`, `127.0.0.1:5000.toml`. Keys (all optional):

    mirrors = ["http://127.0.0.1:5000"]  # endpoints tried in order before the registry itself
    plain_http = false   # talk HTTP instead of HTTPS to the registry (default true for loopback hosts)
    skip_verify = false  # accept any TLS certificate (mirrors and registry)
    ca_file = "/etc/crishim/certs/my-ca.pem"  # extra CA bundle for TLS verification

A mirror serves the same repository paths as the registry (`/v2/<repo>/...`); an image pulled through a
mirror keeps its original name. Files are re-read on every pull so edits need no restart.
"""

from __future__ import annotations

import ipaddress
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from crishim.errors import InvalidArgument

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
    skip_verify: bool = False
    ca_file: str = ""

    def _verify(self) -> ssl.SSLContext | bool:
        if self.skip_verify:
            return False
        if self.ca_file:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=self.ca_file)
            return context
        return True

    def endpoints(self) -> list[Endpoint]:
        """Mirrors first, then the registry itself."""
        verify = self._verify()
        found = [Endpoint(url=url.rstrip("/"), verify=verify, is_mirror=True) for url in self.mirrors]
        plain = _is_loopback(self.host) if self.plain_http is None else self.plain_http
        upstream = DOCKER_HUB_ENDPOINT if self.host == "docker.io" else self.host
        found.append(Endpoint(url=f"{'http' if plain else 'https'}://{upstream}", verify=verify,
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


def _check(path: Path, host: str, data: dict[str, Any]) -> HostConfig:
    for key, value in data.items():
        if key not in _KEYS:
            raise InvalidArgument(f"{path}: unknown key {key!r} (known: {', '.join(sorted(_KEYS))})")
        if not isinstance(value, _KEYS[key]):
            raise InvalidArgument(f"{path}: {key} must be a {_KEYS[key].__name__}")
    mirrors = data.get("mirrors", [])
    for url in mirrors:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"{path}: mirror {url!r} must be an http:// or https:// URL")
    return HostConfig(host=host, mirrors=list(mirrors), plain_http=data.get("plain_http"),
                      skip_verify=data.get("skip_verify", False), ca_file=data.get("ca_file", ""))


def load_host_config(config_dir: Path | None, host: str) -> HostConfig:
    """The settings for `host`; a missing file means defaults, a broken one an error naming the file."""
    if config_dir is None:
        return HostConfig(host=host)
    path = config_dir / f"{host}.toml"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return HostConfig(host=host)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{path}: not valid TOML: {exc}") from exc
    config = _check(path, host, data)
    if config.ca_file and not Path(config.ca_file).is_file():
        raise InvalidArgument(f"{path}: ca_file {config.ca_file!r} does not exist")
    return config
