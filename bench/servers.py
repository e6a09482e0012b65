"""crishim servers for the benchmark: the test harness's server at production log level, plus its RSS and
the time a restart takes to answer again."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.rpc import runtime_stub
from crishim.api.runtime.v1 import api_pb2
from tests.harness import CrishimServer

RECOVERY_TIMEOUT = 120.0
RECOVERY_POLL = 0.005


@dataclass
class BenchServer(CrishimServer):
    """A harness server at log level info, as a node runs it, with the figures the benchmark reads.
    (A dataclass, so that the default below replaces the harness's "debug" in `__init__`: debug logs
    two lines per RPC, a tenth of a millisecond on each read call.)"""

    log_level: str = "info"

    def pid(self) -> int:
        """The Python process serving (nsenter execs it, but look one level down in case it forks)."""
        if self.proc is None:
            raise RuntimeError("the server is not running")
        pid = self.proc.pid
        if _name(pid) == "nsenter":
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                pid = int(children[0])
        return pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        raise RuntimeError(f"no VmRSS for pid {self.pid()}")

    def restart_after_kill9(self) -> float:
        """SIGKILL, start again, and return seconds from the new process's start to its first Version answer.

        Each probe uses a fresh channel: a reused one would sit in gRPC's reconnect back-off (a second or
        more) after failing on the dead server's socket, and that wait would be counted as recovery.
        """
        self.stop(signal.SIGKILL)
        started = time.perf_counter()
        self.start(wait=False)
        deadline = started + RECOVERY_TIMEOUT
        while not answers(self.socket):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"crishim exited with {self.proc.returncode} while recovering:\n{self.log()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"crishim did not answer Version within {RECOVERY_TIMEOUT}s of a restart")
            time.sleep(RECOVERY_POLL)
        return time.perf_counter() - started


def _name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def answers(socket: Path) -> bool:
    """Whether a CRI server answers on `socket` (crishim's or a peer's)."""
    if not socket.exists():
        return False
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        try:
            runtime_stub(ch).Version(api_pb2.VersionRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return True
