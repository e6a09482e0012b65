"""Test-node helpers for the cni tests (a module of its own so tests can import its types)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni import CNIConfig

REAL_BIN = "/usr/lib/cni"


def sh(*argv: str, check: bool = True) -> str:
    """Run a command, returning stdout; failures show the command's stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def netns_list() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()}


@dataclass
class Node:
    """A test node: its own netns where plugins run, plus pod netns created on demand."""

    name: str
    tmp: Path
    pods: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def run(self, *argv: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.name, *argv, check=check)

    def pod(self) -> str:
        """Create a pod netns (lo left down, IPv6 DAD off) and return its path."""
        name = f"{self.name}-p{len(self.pods)}"
        sh("ip", "netns", "add", name)
        self.pods.append(name)
        no_dad(name)
        return f"/run/netns/{name}"

    def in_pod(self, netns: str, *argv: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", os.path.basename(netns), *argv, check=check)

    def iptables(self) -> list[str]:
        """iptables-save of the node without comments and counters, for before/after diffs."""
        out = self.run("iptables-save")
        lines = [ln.split(" [")[0] for ln in out.splitlines() if not ln.startswith("#")]
        return lines

    def links(self) -> str:
        return self.run("ip", "-o", "link")

    def cni(self, bin_dirs: list[str] | None = None, **kwargs: Any) -> CNIConfig:
        return CNIConfig(
            bin_dirs or [REAL_BIN],
            cache_dir=str(self.tmp / "cache"),
            exec_prefix=self.prefix,
            **kwargs,
        )

    def leases(self, network: str) -> list[str]:
        d = self.tmp / "ipam" / network
        if not d.exists():
            return []
        return [p.name for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name]


def no_dad(netns: str) -> None:
    """IPv6 DAD would add seconds per ADD; the tests do not need it."""
    sh(
        "ip",
        "netns",
        "exec",
        netns,
        "sysctl",
        "-q",
        "-w",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    )
