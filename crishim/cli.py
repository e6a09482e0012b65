"""The `crishim` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from crishim import __version__
from crishim.config import ConfigError, load_config
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
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {key: getattr(args, flag) for flag, key in _FLAGS.items()
                             if getattr(args, flag) is not None}
    if args.cni_bin_dirs:
        found["cni.bin_dirs"] = args.cni_bin_dirs.split(":")
    return found


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
    if args.command == "doctor":
        from crishim.network.doctor import doctor

        return doctor(config)
    return 1  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
