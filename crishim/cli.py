"""The `crishim` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from crishim import __version__
from crishim.config import Config, ConfigError, load_config
from crishim.errors import CrishimError
from crishim.log import setup_logging

EXIT_CONFIG = 2

# flag name -> dotted config key
_FLAGS = {
    "socket": "socket",
    "state_dir": "state_dir",
    "run_dir": "run_dir",
    "netns_dir": "netns_dir",
    "cni_conf_dir": "cni.conf_dir",
    "cni_cache_dir": "cni.cache_dir",
    "log_level": "log_level",
    "log_format": "log_format",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crishim", description="A Kubernetes CRI v1 runtime.")
    parser.add_argument("--version", action="version", version=f"crishim {__version__}")
    parser.add_argument("--config", help="TOML config file (default /etc/crishim/config.toml)")
    for flag in _FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag)
    parser.add_argument("--cni-bin-dirs", help="colon-separated plugin directories")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="serve the CRI socket")
    sub.add_parser("doctor", help="show which CNI network is used and why others were skipped")
    inspect = sub.add_parser("inspect", help="show a pod's state and its network set-up timeline")
    inspect.add_argument("pod", help="sandbox id, id prefix, name or namespace/name")
    images = sub.add_parser("images", help="manage the image store").add_subparsers(
        dest="images_command", required=True)
    importer = images.add_parser(
        "import", help="load an OCI layout or `docker save` archive (into the running crishim if one "
        "serves, else straight into the store)")
    importer.add_argument("archive", help="OCI layout directory, OCI archive or docker-save tar "
                          "(gzip too); - reads the archive from stdin")
    _pod_parser(sub)
    return parser


def _pod_parser(sub: Any) -> None:
    """`crishim pod`: a kubelet for one Pod manifest, over any CRI endpoint (crishim/kubelet)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", help="CRI endpoint (default unix://<configured socket>)")
    common.add_argument("--pod-run-dir", help="runner state files (default <run dir>/pods)")
    common.add_argument("--log-root", default="/var/log/pods", help="kubelet's pod log root")
    common.add_argument("--root-dir", default="/var/lib/kubelet", help="kubelet's --root-dir (pod dirs)")
    common.add_argument("--cgroup-root", default="/", help="kubelet's --cgroup-root (pods go below kubepods)")
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument("name", help="the pod's metadata.name")
    named.add_argument("-n", "--namespace", default="default")
    pod = sub.add_parser("pod", help="run a Pod manifest the way kubelet would, without a cluster")
    pods = pod.add_subparsers(dest="pod_command", required=True)
    run = pods.add_parser("run", parents=[common], help="run the pod until Ctrl-C, SIGTERM or `pod delete`")
    run.add_argument("manifest", help="Pod manifest (YAML or JSON)")
    run.add_argument("--resolv-conf", default="/etc/resolv.conf", help="the node's resolv.conf")
    run.add_argument("--cluster-dns", action="append", default=[], help="cluster DNS server (repeatable)")
    run.add_argument("--cluster-domain", default="cluster.local")
    run.add_argument("--runtime-handler", default="", help="RunPodSandbox runtime_handler")
    run.add_argument("--backoff-base", type=float, default=10.0, help="CrashLoopBackOff start, seconds")
    run.add_argument("--backoff-max", type=float, default=300.0, help="CrashLoopBackOff cap, seconds")
    run.add_argument("--container-log-max-size", default="10Mi", help="rotate a container log at this size")
    run.add_argument("--container-log-max-files", type=int, default=5, help="log files kept per container")
    run.add_argument("--container-log-monitor-interval", type=float, default=10.0,
                     help="seconds between log size checks")
    delete = pods.add_parser("delete", parents=[common, named], help="delete the pod gracefully")
    delete.add_argument("--grace-period", type=int, help="seconds (default terminationGracePeriodSeconds)")
    delete.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the runner")
    logs = pods.add_parser("logs", parents=[common, named], help="print a container's log")
    logs.add_argument("-c", "--container")
    logs.add_argument("-p", "--previous", action="store_true", help="the previous instance's log")
    logs.add_argument("--timestamps", action="store_true")
    status = pods.add_parser("status", parents=[common, named], help="show the pod's containers")
    status.add_argument("-o", "--output", choices=("text", "json"), default="text")


def _pod_command(config: Config, args: argparse.Namespace) -> int:
    from crishim.kubelet import commands

    options = commands.RunOptions(
        endpoint=args.endpoint or f"unix://{config.socket}",
        run_dir=args.pod_run_dir or str(Path(config.run_dir) / "pods"),
        log_root=args.log_root, root_dir=args.root_dir, cgroup_root=args.cgroup_root,
        **({"resolv_conf": args.resolv_conf, "cluster_dns": tuple(args.cluster_dns),
            "cluster_domain": args.cluster_domain, "runtime_handler": args.runtime_handler,
            "backoff_base": args.backoff_base, "backoff_max": args.backoff_max,
            "logs": _log_policy(args)}
           if args.pod_command == "run" else {}))
    if args.pod_command == "run":
        return commands.run(args.manifest, options)
    if args.pod_command == "delete":
        return commands.delete(args.name, args.namespace, options, args.grace_period, args.timeout)
    if args.pod_command == "logs":
        return commands.logs(args.name, args.namespace, args.container, args.previous, args.timestamps,
                             options)
    return commands.status(args.name, args.namespace, args.output, options)


def _log_policy(args: argparse.Namespace) -> Any:
    from crishim.kubelet.logrotate import LogPolicy, parse_quantity

    try:
        max_size = parse_quantity(args.container_log_max_size)
    except ValueError as exc:
        raise SystemExit(f"crishim pod: --container-log-max-size: {exc}") from None
    return LogPolicy(max_size=max_size, max_files=args.container_log_max_files,
                     period=args.container_log_monitor_interval)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {key: getattr(args, flag) for flag, key in _FLAGS.items()
                             if getattr(args, flag) is not None}
    if args.cni_bin_dirs:
        found["cni.bin_dirs"] = args.cni_bin_dirs.split(":")
    return found


def _show_progress(event: dict[str, Any]) -> None:
    mib = event.get("bytes", event.get("size", 0)) / (1 << 20)
    if event["event"] == "read":
        print(f"read {mib:.1f} MiB{' (all)' if event.get('done') else ''}", file=sys.stderr)
    elif event["event"] == "layer":
        print(f"layer {event['number']}/{event['count']} {event['diff_id'][:19]} {mib:.1f} MiB unpacked",
              file=sys.stderr)


def _import_images(config: Config, archive: str) -> int:
    """Into the running crishim over its admin socket; into the store directly when none runs."""
    from crishim.admin import admin_socket_path, client

    path = admin_socket_path(config.run_dir)
    try:
        sock = client.connect(path)
    except PermissionError:
        print(f"crishim: permission denied on {path}: only root may import images", file=sys.stderr)
        return 1
    try:
        if sock is not None:
            images = client.import_archive(sock, archive, _show_progress)
        else:
            images = asyncio.run(_import_offline(config, archive))
    except (OSError, client.AdminError, CrishimError) as exc:
        print(f"crishim: {exc}", file=sys.stderr)
        return 1
    for image in images:
        print(image["id"], " ".join(image["repo_tags"]))
    return 0


async def _import_offline(config: Config, archive: str) -> list[dict[str, Any]]:
    from crishim.image import ImageManager
    from crishim.image.archive import ImportMonitor

    manager = ImageManager(root=Path(config.state_dir) / "images",
                           registry_config_dir=config.images.registry_config_dir)
    try:
        await manager.start()
        source = sys.stdin.buffer if archive == "-" else Path(archive)
        records = await manager.import_archive(source, ImportMonitor(report=_show_progress))
    finally:
        await manager.close()
    return [{"id": r.id, "repo_tags": r.repo_tags} for r in records]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"crishim: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # `crishim pod` is a client: its stdout is the pod's status lines, the server's debug level is not for it
    setup_logging("warning" if args.command == "pod" else config.log_level, config.log_format)
    if args.command == "serve":
        from crishim.server.app import AlreadyServing, serve

        try:
            asyncio.run(serve(config))
        except AlreadyServing as exc:
            print(f"crishim: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "images":
        return _import_images(config, args.archive)
    if args.command == "inspect":
        from crishim.telemetry.inspect import inspect

        return inspect(config, args.pod)
    if args.command == "pod":
        return _pod_command(config, args)
    if args.command == "doctor":
        from crishim.network.doctor import doctor

        return doctor(config)
    return 1  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
