"""The `crishim` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from crishim import __version__
from crishim.config import Config, ConfigError, load_config
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
    importer = images.add_parser("import", help="load an OCI layout or `docker save` archive")
    importer.add_argument("archive", help="OCI layout directory, OCI archive or docker-save tar")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {key: getattr(args, flag) for flag, key in _FLAGS.items()
                             if getattr(args, flag) is not None}
    if args.cni_bin_dirs:
        found["cni.bin_dirs"] = args.cni_bin_dirs.split(":")
    return found


async def _import_images(config: Config, archive: str) -> int:
    from crishim.errors import CrishimError
    from crishim.image import ImageManager

    manager = ImageManager(root=Path(config.state_dir) / "images",
                           registry_config_dir=config.images.registry_config_dir)
    try:
        await manager.start()
        records = await manager.import_archive(Path(archive))
    except CrishimError as exc:
        print(f"crishim: {exc}", file=sys.stderr)
        return 1
    finally:
        await manager.close()
    for record in records:
        print(record.id, " ".join(record.repo_tags))
    return 0


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
        return asyncio.run(_import_images(config, args.archive))
    if args.command == "inspect":
        from crishim.telemetry.inspect import inspect

        return inspect(config, args.pod)
    if args.command == "doctor":
        from crishim.network.doctor import doctor

        return doctor(config)
    return 1  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
