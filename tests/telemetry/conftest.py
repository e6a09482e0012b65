"""Fixtures for the telemetry, stats and events tests: throw-away network namespaces and cgroups."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import poll, run

CGROUP_ROOT = Path("/sys/fs/cgroup")

# Burns CPU and holds the memory it was told to allocate until killed; prints once it holds it.
BUSY = """
import sys
sys.stdin.readline()  # allocate only once the test has placed this process in its cgroup
hold = bytearray(int(sys.argv[1]))
for i in range(0, len(hold), 4096):
    hold[i] = 1
print("allocated", flush=True)
while True:
    sum(range(10000))
"""


@pytest.fixture
def netns() -> Iterator[Callable[[], str]]:
    """Make network namespaces (lo up) on demand; all are deleted afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"crishim-tm-{secrets.token_hex(4)}"
        run(["ip", "netns", "add", name])
        made.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    yield make
    for name in made:
        for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def cgroup_dirs() -> Iterator[Callable[[Path, list[str]], str]]:
    """Make a cgroup named crishim-test-X in the given hierarchies; processes are killed, dirs removed."""
    made: list[Path] = []

    def make(base: Path, controllers: list[str]) -> str:
        name = f"crishim-test-{secrets.token_hex(4)}"
        for controller in controllers:
            path = base / controller / name
            path.mkdir()
            made.append(path)
        return f"/{name}"

    yield make
    for path in made:
        with contextlib.suppress(FileNotFoundError):
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    for path in made:
        poll(lambda path=path: remove_cgroup_dir(path), what=f"cgroup {path} to be removable")


def remove_cgroup_dir(path: Path) -> bool:
    """False while killed processes are still leaving the cgroup."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


@pytest.fixture
def busy() -> Iterator[Callable[[int, Callable[[int], None]], subprocess.Popen[str]]]:
    """Start processes that burn CPU and hold `size` bytes of memory; killed afterwards.

    `place(pid)` runs before the process allocates, so its memory is charged where the test put it.
    """
    procs: list[subprocess.Popen[str]] = []

    def start(size: int, place: Callable[[int], None]) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", BUSY, str(size)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        place(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
