"""Image references, normalised the way containerd and Docker do it.

`busybox` means `docker.io/library/busybox:latest`; every name stored or compared is in that full form so
that a short name, a tag and a digest reference all meet on one spelling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crishim.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_ID_RE = re.compile(r"^(?:sha256:)?([a-f0-9]{64})$")


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The repository with its registry: `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    @property
    def tagged(self) -> str:
        return f"{self.name}:{self.tag}" if self.tag else ""

    @property
    def digested(self) -> str:
        return f"{self.name}@{self.digest}" if self.digest else ""

    @property
    def object(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest when known, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        return self.digested or self.tagged


def is_digest(value: str) -> bool:
    return bool(_DIGEST_RE.match(value))


def as_image_id(value: str) -> str | None:
    """`sha256:<hex>` for a full image id given with or without its algorithm, else None."""
    match = _ID_RE.match(value)
    return f"sha256:{match.group(1)}" if match else None


def parse(ref: str) -> Reference:
    """Parse and normalise `ref`; a bad one raises InvalidArgument saying what is wrong with it."""
    if not ref:
        raise InvalidArgument("image reference is empty")
    if any(c.isspace() for c in ref):
        raise InvalidArgument(f"invalid image reference {ref!r}: it contains whitespace")
    rest, _, digest = ref.partition("@")
    if digest and not is_digest(digest):
        raise InvalidArgument(f"invalid image reference {ref!r}: digest must be sha256:<64 hex digits>")
    tag = ""
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.match(tag):
            raise InvalidArgument(f"invalid image reference {ref!r}: bad tag {tag!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, remainder
        if not _DOMAIN_RE.match(domain):
            raise InvalidArgument(f"invalid image reference {ref!r}: bad registry host {domain!r}")
    else:
        domain, path = DEFAULT_DOMAIN, rest
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if not path or not _PATH_RE.match(path):
        hint = " (repository names must be lowercase)" if path != path.lower() else ""
        raise InvalidArgument(f"invalid image reference {ref!r}: bad repository name {path!r}{hint}")
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if not tag and not digest:
        tag = DEFAULT_TAG
    if len(f"{domain}/{path}") > 255:
        raise InvalidArgument(f"invalid image reference {ref!r}: repository name longer than 255")
    return Reference(domain=domain, path=path, tag=tag, digest=digest)
