"""``cryptopipe serve [--host 127.0.0.1] [--port 8050]``: the HTTP API (cryptopipe/httpapi.py)."""

from __future__ import annotations

import argparse

from marketdata.settings import Settings
from redisstore.conn import connect_settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``serve`` command."""
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="the HTTP API: candles, metrics, status, reconciliation, live updates",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until interrupted."""
    from cryptopipe.httpapi import serve

    connect_settings(settings).ping()  # a missing Redis is one clear line, before binding
    print(f"cryptopipe serve: http://{args.host}:{args.port}/api/candles", flush=True)
    serve(settings, args.host, args.port)
    return 0
