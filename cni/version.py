"""CNI spec versions this library speaks, and how to compare them."""

from __future__ import annotations

import re

CURRENT = "1.1.0"
SUPPORTED = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def parse(version: str) -> tuple[int, int, int]:
    """Split ``"1.0.0"`` into a comparable tuple; raises ValueError on anything else."""
    m = _SEMVER.match(version)
    if not m:
        raise ValueError(f"invalid CNI version {version!r} (want MAJOR.MINOR.PATCH)")
    return int(m[1]), int(m[2]), int(m[3])


def at_least(version: str, minimum: str) -> bool:
    """True if ``version`` >= ``minimum``."""
    return parse(version) >= parse(minimum)
