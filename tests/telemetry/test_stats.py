"""cgroup readers, CPU rates, writable-layer usage and pod network counters against the real kernel."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crishim.stats import CgroupReader, Hugetlb, Pressure, cgroup_of, dir_usage, read_pod_interfaces
from crishim.stats.cpu import CpuRates
from crishim.stats.netdev import parse_net_dev
from crishim.stats.procs import parse_limits
from tests.harness import poll, run
from tests.telemetry.conftest import CGROUP_ROOT

MiB = 1024 * 1024
V1_CONTROLLERS = ["cpuacct", "memory", "pids"]


def _enter(base: Path, controllers: list[str], relative: str, pid: int) -> None:
    for controller in controllers:
        (base / controller / relative.lstrip("/") / "cgroup.procs").write_text(str(pid))


def _v1_available() -> bool:
    return (CGROUP_ROOT / "memory").is_dir() and not (CGROUP_ROOT / "cgroup.controllers").exists()


Busy = Callable[[int, Callable[[int], None]], subprocess.Popen[str]]


def test_cpu_rate_needs_two_samples() -> None:
    rates = CpuRates()
    assert rates.update("c", 1_000_000_000, 5_000_000_000) is None
    # 0.5 s of CPU over 1 s: half a core.
    assert rates.update("c", 2_000_000_000, 5_500_000_000) == 500_000_000
    # A recreated cgroup restarts its counter: no rate rather than a negative one.
    assert rates.update("c", 3_000_000_000, 1_000) is None


def test_parse_net_dev() -> None:
    text = ("Inter-|   Receive                                                |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs "
            "drop fifo colls carrier compressed\n"
            "    lo:     100       1    0    0    0     0          0         0      100       1    0 "
            "   0    0     0       0          0\n"
            "  eth0:    2048      20    3    0    0     0          0         0     4096      30    4 "
            "   0    0     0       0          0\n")
    eth0 = parse_net_dev(text)[1]
    assert (eth0.name, eth0.rx_bytes, eth0.rx_errors, eth0.tx_bytes, eth0.tx_errors) == (
        "eth0", 2048, 3, 4096, 4)
    assert (eth0.rx_packets, eth0.rx_dropped, eth0.tx_packets, eth0.tx_dropped) == (20, 0, 30, 0)


def test_parse_limits_keeps_the_soft_open_files_limit() -> None:
    text = ("Limit                     Soft Limit           Hard Limit           Units     \n"
            "Max cpu time              unlimited            unlimited            seconds   \n"
            "Max open files            1024                 524288               files     \n")
    assert parse_limits(text) == {"max_open_files": 1024}
    assert parse_limits(text.replace("1024 ", "unlimited ")) == {}


@pytest.mark.root
@pytest.mark.skipif(not _v1_available(), reason="needs cgroup v1 hierarchies")
def test_hybrid_reader_reads_settings_pressure_and_threads(cgroup_dirs: Callable[[Path, list[str]], str],
                                                          busy: Busy) -> None:
    controllers = ["cpu", *V1_CONTROLLERS, *(["unified"] if (CGROUP_ROOT / "unified").is_dir() else [])]
    relative = cgroup_dirs(CGROUP_ROOT, controllers)
    cpu = CGROUP_ROOT / "cpu" / relative.lstrip("/")
    (cpu / "cpu.shares").write_text("512")
    (cpu / "cpu.cfs_quota_us").write_text("50000")
    (CGROUP_ROOT / "memory" / relative.lstrip("/") / "memory.soft_limit_in_bytes").write_text(str(32 * MiB))
    (CGROUP_ROOT / "pids" / relative.lstrip("/") / "pids.max").write_text("100")
    reader = CgroupReader(CGROUP_ROOT, unified=False)
    idle = reader.read(relative)
    assert idle is not None and idle.threads == 0 and idle.cfs_periods == 0
    proc = busy(8 * MiB, lambda pid: _enter(CGROUP_ROOT, controllers, relative, pid))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "allocated"
    later = poll(lambda: (s := reader.read(relative)) and s.cfs_periods and s.cpu_user_ns and s,
                 what="CFS periods and user time to be counted")
    assert (later.cpu_shares, later.cpu_quota_us, later.cpu_period_us) == (512, 50000, 100000)
    assert later.memory_reservation == 32 * MiB and later.threads_max == 100
    assert later.threads == 1 and reader.pids(relative) == [proc.pid]
    # v1 splits user and system time by ticks: close to the precise total, not bounded by it.
    assert later.cpu_usage_ns is not None and later.cpu_system_ns is not None
    assert abs(later.cpu_user_ns + later.cpu_system_ns - later.cpu_usage_ns) < 100_000_000
    assert later.page_faults_local is not None and later.page_faults_local > 8 * MiB // 4096
    assert later.memory_max_usage is not None and later.memory_max_usage >= 8 * MiB
    assert later.oom_kills == 0 and later.memory_failcnt == 0
    if "unified" in controllers:  # PSI comes from the cgroup2 mount at the same path
        assert set(later.pressure) == {"cpu", "memory", "io"}
        assert later.pressure["cpu"].full_us <= later.pressure["cpu"].some_us


def test_v2_files_are_parsed(tmp_path: Path) -> None:
    """The cgroup2 layout with every controller (this machine's cgroup2 mount has none below its root):
    the files as the kernel writes them."""
    cg = tmp_path / "pod" / "ctr"
    cg.mkdir(parents=True)
    files = {
        "cgroup.procs": "7\n", "cgroup.threads": "7\n8\n9\n", "cpu.stat": "usage_usec 3000\nuser_usec 2000\n"
        "system_usec 1000\nnr_periods 10\nnr_throttled 4\nthrottled_usec 500\n",
        "cpu.max": "50000 100000\n", "cpu.weight": "100\n", "memory.current": "4096\n",
        "memory.peak": "8192\n", "memory.max": "max\n", "memory.low": "0\n",
        "memory.stat": "anon 1024\nfile 2048\nfile_mapped 512\nkernel 256\ninactive_file 1024\n"
        "pgfault 30\npgmajfault 2\n",
        "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n", "pids.max": "max\n",
        "cpu.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=500000\n",
        "hugetlb.2MB.current": "4194304\n", "hugetlb.2MB.rsvd.current": "0\n",
        "hugetlb.1GB.current": "0\n",
        "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
    }
    for name, text in files.items():
        (cg / name).write_text(text)
    stats = CgroupReader(tmp_path, unified=True).read("/pod/ctr")
    assert stats is not None
    assert (stats.cpu_usage_ns, stats.cpu_user_ns, stats.cpu_system_ns) == (3_000_000, 2_000_000, 1_000_000)
    assert (stats.cfs_periods, stats.cfs_throttled_periods, stats.cfs_throttled_ns) == (10, 4, 500_000)
    # Weight 100, the kernel's default, maps back to shares as runc maps shares to weight.
    assert (stats.cpu_quota_us, stats.cpu_period_us, stats.cpu_shares) == (50000, 100000, 2597)
    assert (stats.memory_usage, stats.memory_max_usage, stats.memory_working_set) == (4096, 8192, 3072)
    assert (stats.memory_cache, stats.memory_mapped_file, stats.memory_kernel) == (2048, 512, 256)
    assert (stats.memory_failcnt, stats.oom_kills, stats.memory_limit, stats.memory_reservation) == (
        3, 1, None, None)
    assert (stats.threads, stats.threads_max, stats.processes) == (3, None, 1)
    assert stats.pressure == {"cpu": Pressure(some_us=1_500_000, full_us=500_000)}
    assert stats.hugetlb == {"2MB": Hugetlb(usage=4 * MiB, max_usage=None), "1GB": Hugetlb(0, None)}
    (disk,) = stats.blkio
    assert (disk.major, disk.minor, disk.read_bytes, disk.write_bytes, disk.reads, disk.writes) == (
        8, 0, 4096, 8192, 1, 2)


@pytest.mark.root
@pytest.mark.skipif(not _v1_available(), reason="needs cgroup v1 hierarchies")
def test_v1_reader_follows_a_busy_process(cgroup_dirs: Callable[[Path, list[str]], str],
                                          busy: Busy) -> None:
    relative = cgroup_dirs(CGROUP_ROOT, V1_CONTROLLERS)
    reader = CgroupReader(CGROUP_ROOT, unified=False)
    empty = reader.read(relative)
    assert empty is not None and empty.processes == 0
    proc = busy(64 * MiB, lambda pid: _enter(CGROUP_ROOT, V1_CONTROLLERS, relative, pid))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "allocated"
    assert cgroup_of(proc.pid, reader) == relative
    first = reader.read(relative)
    assert first is not None and first.cpu_usage_ns is not None
    later = poll(lambda: (s := reader.read(relative)) and s.cpu_usage_ns > first.cpu_usage_ns and s,
                 what="CPU usage to grow")
    assert later.timestamp > first.timestamp
    assert later.processes == 1
    # Memory charged at allocation time stays charged while the process holds it.
    assert later.memory_usage is not None and later.memory_usage >= 64 * MiB
    assert later.memory_rss is not None and later.memory_rss >= 64 * MiB
    assert later.memory_working_set is not None and later.memory_working_set >= 64 * MiB
    assert later.page_faults is not None and later.page_faults > 64 * MiB // 4096
    assert later.memory_limit is None  # no limit was set
    assert later.memory_available is None


@pytest.mark.root
@pytest.mark.skipif(not _v1_available(), reason="needs cgroup v1 hierarchies")
def test_v1_memory_limit_gives_available_bytes(cgroup_dirs: Callable[[Path, list[str]], str],
                                               busy: Busy) -> None:
    relative = cgroup_dirs(CGROUP_ROOT, V1_CONTROLLERS)
    (CGROUP_ROOT / "memory" / relative.lstrip("/") / "memory.limit_in_bytes").write_text(str(256 * MiB))
    proc = busy(32 * MiB, lambda pid: _enter(CGROUP_ROOT, V1_CONTROLLERS, relative, pid))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "allocated"
    stats = CgroupReader(CGROUP_ROOT).read(relative)
    assert stats is not None and stats.memory_limit == 256 * MiB
    assert stats.memory_working_set is not None and stats.memory_available is not None
    assert stats.memory_available == 256 * MiB - stats.memory_working_set


@pytest.mark.root
def test_v2_reader_reads_cpu_and_processes(cgroup_dirs: Callable[[Path, list[str]], str],
                                           busy: Busy) -> None:
    unified = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else CGROUP_ROOT / "unified"
    if not (unified / "cgroup.controllers").exists():
        pytest.skip("no cgroup2 mount")
    base = unified.parent
    relative = cgroup_dirs(base, [unified.name])
    reader = CgroupReader(unified, unified=True)
    proc = busy(MiB, lambda pid: (unified / relative.lstrip("/") / "cgroup.procs").write_text(str(pid)))
    assert cgroup_of(proc.pid, reader) == relative
    first = reader.read(relative)
    assert first is not None and first.cpu_usage_ns is not None and first.processes == 1
    poll(lambda: (s := reader.read(relative)) and s.cpu_usage_ns > first.cpu_usage_ns,
         what="v2 CPU usage to grow")


def test_missing_cgroup_reads_as_none() -> None:
    assert CgroupReader.detect().read("/crishim-test-does-not-exist") is None


def test_writable_layer_usage_counts_bytes_and_inodes(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    before = dir_usage(str(upper))
    assert before is not None and before.inodes_used == 1
    (upper / "big").write_bytes(b"x" * MiB)
    (upper / "dir").mkdir()
    (upper / "dir" / "small").write_text("hello")
    (upper / "dir" / "link").hardlink_to(upper / "big")
    after = dir_usage(str(upper))
    assert after is not None and after.timestamp > before.timestamp
    assert after.inodes_used == 4  # upper, big (linked twice), dir, small
    assert MiB <= after.used_bytes < 2 * MiB
    assert Path(after.mountpoint).is_dir()
    assert dir_usage(str(tmp_path / "gone")) is None


SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(50):
    s.sendto(b"x" * 1000, (sys.argv[1], 9))
"""


@pytest.mark.root
async def test_pod_network_counters_grow_after_traffic(netns: Callable[[], str]) -> None:
    pod, peer = netns(), netns()
    run(["ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", peer])
    run(["ip", "-n", pod, "addr", "add", "10.251.0.2/24", "dev", "eth0"])
    run(["ip", "-n", peer, "addr", "add", "10.251.0.1/24", "dev", "peer0"])
    run(["ip", "-n", pod, "link", "set", "eth0", "up"])
    run(["ip", "-n", peer, "link", "set", "peer0", "up"])
    path = f"/run/netns/{pod}"
    before = {c.name: c for c in await read_pod_interfaces(path)}
    assert set(before) == {"eth0"}  # lo is left out
    run(["ip", "netns", "exec", peer, sys.executable, "-c", SENDER, "10.251.0.2"])
    after = {c.name: c for c in await read_pod_interfaces(path)}
    assert after["eth0"].rx_bytes >= before["eth0"].rx_bytes + 50 * 1000
    # Each read sees its own namespace's interfaces.
    assert {c.name for c in await read_pod_interfaces(f"/run/netns/{peer}")} == {"peer0"}
