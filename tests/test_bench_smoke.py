"""`make bench` still works end to end (a handful of pods), and leaves nothing behind; no timing checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.root

SECTIONS = ("config", "environment", "floor", "crishim", "ratios", "scale", "containers", "pulls",
            "targets", "cleanup")
LEVELS = ("1", "8", "32")


def test_bench_runs_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--pods", "5", "--scale", "20", "--pulls", "3",
                           "--pull-shapes", "busybox", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert all(section in results for section in SECTIONS)
    for level in LEVELS:
        assert results["floor"][level]["setup"]["n"] == 5
        crishim = results["crishim"][level]
        assert crishim["errors"] == 0, crishim["error_samples"]
        assert all(crishim[rpc]["n"] == 5 for rpc in ("run", "status", "stop", "remove"))
    assert results["scale"]["ready_after_recovery"] == 20
    containers = results["containers"]
    assert containers["measured"] and containers["crishim"]["errors"] == 0, containers["crishim"]
    assert all(containers[side][step]["n"] == 5 for side in ("floor", "crishim")
               for step in ("create", "start", "create_start", "stop_remove"))
    assert containers["ratios"]["create_start_vs_floor_p50"] is not None
    busybox = results["pulls"]["shapes"]["busybox"]
    assert list(results["pulls"]["shapes"]) == ["busybox"]
    assert busybox["pulls"] == 3 and busybox["layers"] == 1
    assert busybox["floor"]["wall_s"] > 0 and 0 < busybox["crishim"]["wall_s"] < 10
    assert busybox["ratios"]["wall_vs_floor"] > 0
    assert {t["verdict"] for t in results["targets"]} <= {"PASS", "MISS"}
    assert "targets" in done.stdout
    assert results["cleanup"] == {"ok": True, "leftovers": []}
    env = results["environment"]
    assert not Path(f"/run/netns/{env['node']}").exists()
    assert not Path(env["root"]).exists()
    assert env["root"] not in Path("/proc/self/mountinfo").read_text()
