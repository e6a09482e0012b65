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
    return parser


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
    setup_logging(config.log_level, config.log_format)
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
    if args.command == "doctor":
        from crishim.network.doctor import doctor

        return doctor(config)
    return 1  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
