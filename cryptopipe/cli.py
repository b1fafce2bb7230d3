"""The ``cryptopipe`` command line (docs/architecture.md section 8).

Each command group lives in a module of :mod:`cryptopipe.commands` that exposes
``register(subparsers, common)``; ``common`` is the parent parser holding the
options every command takes (``--redis-url``, ``--home``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cryptopipe.errors import CommandError
from marketdata.settings import Settings
from redisstore.conn import RedisUnavailableError

#: Command modules, in the order their commands appear in ``--help``.
COMMAND_MODULES = (
    "cryptopipe.commands.up",
    "cryptopipe.commands.feed",
    "cryptopipe.commands.flowctl",
    "cryptopipe.commands.stream",
    "cryptopipe.commands.candles",
    "cryptopipe.commands.lake",
    "cryptopipe.commands.batch",
    "cryptopipe.commands.metrics",
    "cryptopipe.commands.reconcile",
    "cryptopipe.commands.serve",
)


def common_parser(*, top: bool = False) -> argparse.ArgumentParser:
    """Options every command takes, before or after the command's name.

    Subcommands get copies whose default is ``SUPPRESS`` so that a value given
    before the command (``cryptopipe --home X feed ...``) is not reset by them.
    """
    default = None if top else argparse.SUPPRESS
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis-url",
        default=default,
        help="Redis URL (env REDIS_URL; default redis://127.0.0.1:6379/0)",
    )
    common.add_argument(
        "--home",
        default=default,
        help="working directory: lake, recovery, local Redis, Dagster (env CRYPTOPIPE_HOME; "
        "default ./.cryptopipe)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="log more",
    )
    return common


def version() -> str:
    """The installed package's version (``pyproject.toml``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("realtime-crypto-pipeline")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: ./dev setup)"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="cryptopipe",
        description="Realtime crypto market data: feeds, speed layer, batch layer, reconciliation.",
        parents=[common_parser(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"cryptopipe {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from ``--redis-url`` / ``--home``, the environment and defaults."""
    return Settings.from_env(redis_url=args.redis_url, home=args.home)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cryptopipe`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # -v is for our own debug lines; these libraries' are noise (redis-py logs every
    # failed connection at DEBUG before raising what we explain in one line).
    for noisy in ("redis", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.INFO)
    try:
        settings = settings_from_args(args)
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except InterruptedError as exc:
        print(f"cryptopipe: {exc}", file=sys.stderr)
        return 1
    except (CommandError, RedisUnavailableError, ValueError, FileNotFoundError) as exc:
        print(f"cryptopipe: error: {exc}", file=sys.stderr)
        return getattr(exc, "status", 2)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
