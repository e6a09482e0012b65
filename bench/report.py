"""Ratios against the floor, the issue's targets with PASS/MISS, and the stdout table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench import pulls

RUN_RATIO = 1.15
TEARDOWN_RATIO = 1.15
THROUGHPUT_RATIO = 0.9
THROUGHPUT_LEVELS = (8, 32)
LIST_MS = 10.0
STATUS_MS = 2.0
RSS_MB = 80.0
RECOVERY_S = 2.0
TARGET_SCALE = 1000


@dataclass(frozen=True)
class Target:
    name: str
    limit: float
    measured: float | None
    at_least: bool = False

    @property
    def passed(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "goal": f"{'>=' if self.at_least else '<='} {self.limit}",
                "measured": self.measured, "verdict": self.verdict}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def ratios(floor: dict[str, Any], crishim: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per concurrency: Run vs pin+ADD, Stop+Remove vs DEL+unpin (p50s), and pods/s vs the floor's."""
    out = {}
    for level, ours in crishim.items():
        base = floor[level]
        out[level] = {
            "run_vs_floor_setup_p50": _ratio(ours["run"].get("p50"), base["setup"].get("p50")),
            "stop_remove_vs_floor_teardown_p50": _ratio(ours["stop_remove"].get("p50"),
                                                        base["teardown"].get("p50")),
            "pods_per_s_vs_floor": _ratio(ours["pods_per_s"], base["pods_per_s"]),
            "create_per_s_vs_floor": _ratio(ours["create_per_s"], base["create_per_s"]),
        }
    return out


def container_ratios(floor: dict[str, Any], crishim: dict[str, Any]) -> dict[str, float | None]:
    """Create+Start and Stop+Remove p50s against the floor's; the issue sets no target for them."""
    return {
        "create_start_vs_floor_p50": _ratio(crishim["create_start"].get("p50"),
                                            floor["create_start"].get("p50")),
        "stop_remove_vs_floor_p50": _ratio(crishim["stop_remove"].get("p50"),
                                           floor["stop_remove"].get("p50")),
    }


def targets(results: dict[str, Any]) -> list[Target]:
    found: list[Target] = []
    for level, r in results["ratios"].items():
        found.append(Target(f"Run p50 / floor ADD p50 (c={level})", RUN_RATIO, r["run_vs_floor_setup_p50"]))
        found.append(Target(f"Stop+Remove p50 / floor DEL p50 (c={level})", TEARDOWN_RATIO,
                            r["stop_remove_vs_floor_teardown_p50"]))
    for level in THROUGHPUT_LEVELS:
        r = results["ratios"].get(str(level))
        if r is not None:
            found.append(Target(f"pods/s vs floor (c={level})", THROUGHPUT_RATIO, r["pods_per_s_vs_floor"],
                                at_least=True))
    found += pull_targets(results.get("pulls") or {})
    scale = results.get("scale")
    if scale:
        count = scale["sandboxes"]
        top = scale["levels"][str(count)]
        note = "" if count >= TARGET_SCALE else f" [target is at {TARGET_SCALE}]"
        found += [
            Target(f"ListPodSandbox p50 ms, {count} sandboxes{note}", LIST_MS, top["list"].get("p50")),
            Target(f"PodSandboxStatus p50 ms, {count} sandboxes{note}", STATUS_MS, top["status"].get("p50")),
            Target(f"RSS MB, {count} sandboxes{note}", RSS_MB, top["rss_mb"]),
            Target(f"recovery s, {count} sandboxes{note}", RECOVERY_S, scale["recovery_s"]),
        ]
    return found


def pull_targets(pulls: dict[str, Any]) -> list[Target]:
    """Issue 17: a pull's wall time and CPU at or below containerd's, measured in the same run."""
    found = []
    for shape in pulls.get("shapes", {}).values():
        ours, ref = shape["crishim"], shape["containerd"]
        if ref is None:
            continue
        found.append(Target(f"pull s, {shape['label']} (containerd)", ref["wall_s"], ours["wall_s"]))
        found.append(Target(f"pull CPU s, {shape['label']} (containerd)", ref["cpu_s"], ours["cpu_s"]))
    return found


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _row(label: str, summary: dict[str, float]) -> str:
    cells = [_fmt(summary.get(k)) for k in ("p50", "p90", "p99")]
    return f"  {label:<32}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10}{int(summary.get('n', 0)):>7}"


FLOOR_ROWS = (("pin netns", "pin"), ("CNI ADD", "add"), ("pin + ADD (setup)", "setup"),
              ("CNI DEL", "del"), ("release netns", "unpin"), ("DEL + release (teardown)", "teardown"))
CRISHIM_ROWS = (("RunPodSandbox", "run"), ("PodSandboxStatus", "status"), ("StopPodSandbox", "stop"),
                ("RemovePodSandbox", "remove"), ("Stop + Remove", "stop_remove"))
CTR_FLOOR_ROWS = (("floor bundle+conmon/runc create", "create"), ("floor runc start", "start"),
                  ("floor create + start", "create_start"), ("floor kill + conmon exit", "stop"),
                  ("floor delete + unmount + rm", "remove"), ("floor teardown", "stop_remove"))
CTR_CRISHIM_ROWS = (("CreateContainer", "create"), ("StartContainer", "start"),
                    ("Create + Start", "create_start"), ("StopContainer (timeout 0)", "stop"),
                    ("RemoveContainer", "remove"), ("Stop + Remove", "stop_remove"))


def render_containers(c: dict[str, Any]) -> list[str]:
    if not c["measured"]:
        return [f"containers: {c['note']}"]
    floor, ours = c["floor"], c["crishim"]
    lines = [f"containers: {c['count']} x {c['image']} `{' '.join(c['command'])}`, one READY pod each, "
             f"concurrency {c['concurrency']}",
             f"container floor: {c['floor_method']}",
             f"{'':<34}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'n':>7}"]
    lines += [_row(label, floor[key]) for label, key in CTR_FLOOR_ROWS]
    lines += [_row(label, ours[key]) for label, key in CTR_CRISHIM_ROWS]
    if ours["errors"]:
        lines.append(f"  RPC errors: {ours['errors']}, e.g. {ours['error_samples'][0]}")
    return lines


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [f"crishim bench: {cfg['pods']} pods per level, concurrency {cfg['concurrency']}, "
             f"{cfg['cpus']} CPUs, kernel {cfg['kernel']}",
             f"network: {cfg['network']}", f"floor: {cfg['floor_method']}",
             f"floor and crishim alternate in {cfg['rounds']} rounds per concurrency level", ""]
    for level, ours in results["crishim"].items():
        base = results["floor"][level]
        lines.append(f"concurrency {level:<22}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'n':>7}")
        lines += [_row(f"floor {label}", base[key]) for label, key in FLOOR_ROWS]
        lines += [_row(label, ours[key]) for label, key in CRISHIM_ROWS]
        lines.append(f"  pods/s (create+delete): floor {base['pods_per_s']}, crishim {ours['pods_per_s']}; "
                     f"create only: floor {base['create_per_s']}, crishim {ours['create_per_s']}")
        if ours["errors"]:
            lines.append(f"  RPC errors: {ours['errors']}, e.g. {ours['error_samples'][0]}")
        lines.append("")
    lines.append("ratios (crishim / floor)")
    for level, r in results["ratios"].items():
        lines.append(f"  c={level:<4} Run/setup {_fmt(r['run_vs_floor_setup_p50'])}  "
                     f"Stop+Remove/teardown {_fmt(r['stop_remove_vs_floor_teardown_p50'])}  "
                     f"pods/s {_fmt(r['pods_per_s_vs_floor'])}  create/s {_fmt(r['create_per_s_vs_floor'])}")
    if results["containers"]["measured"]:
        r = results["containers"]["ratios"]
        lines.append(f"  containers (c=1, no target) Create+Start/floor create+start "
                     f"{_fmt(r['create_start_vs_floor_p50'])}  Stop+Remove/floor teardown "
                     f"{_fmt(r['stop_remove_vs_floor_p50'])}")
    scale = results.get("scale")
    if scale:
        lines += ["", f"scale ({scale['network']})"]
        for count, level in scale["levels"].items():
            lines.append(f"  {count:>5} sandboxes: RSS {level['rss_mb']} MB, ListPodSandbox p50 "
                         f"{_fmt(level['list'].get('p50'))} ms, PodSandboxStatus p50 "
                         f"{_fmt(level['status'].get('p50'))} ms")
        lines.append(f"  restart after kill -9 with {scale['sandboxes']} records: first Version answer after "
                     f"{scale['recovery_s']} s (process start + recovery), RSS then "
                     f"{scale['rss_after_recovery_mb']} MB, {scale['ready_after_recovery']} READY")
    lines += ["", *render_containers(results["containers"])]
    if "pulls" in results:
        lines += ["", *pulls.render(results["pulls"])]
    lines += ["", "targets"]
    for target in results["targets"]:
        lines.append(f"  {target['verdict']:<5} {target['name']:<58} {target['goal']:>9}  measured "
                     f"{'-' if target['measured'] is None else target['measured']}")
    cleanup = results.get("cleanup", {})
    lines += ["", f"cleanup: {'ok' if cleanup.get('ok') else 'LEFTOVERS ' + str(cleanup.get('leftovers'))}"]
    return "\n".join(lines)
