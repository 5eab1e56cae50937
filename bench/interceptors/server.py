"""The Recommendations server for bench/interceptors: `--variant full` (our whole middleware stack,
less any `--without NAME` middleware), `noop` (the pipeline with one empty middleware) or `bare` (no
interceptors at all), plaintext, otherwise exactly the production wiring."""

from __future__ import annotations

import argparse
import asyncio
import sys

from libs.interceptors import server_middleware
from libs.interceptors.core import Middleware
from libs.runtime.config import ServerConfig, add_config_flags, read_config
from libs.runtime.logs import configure_logging
from services.recommendations.catalog import DEFAULT_CATALOG, Catalog
from services.recommendations.main import build_server
from services.recommendations.servicer import category_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_flags(parser, ServerConfig, "BENCH", 0)
    parser.add_argument("--variant", choices=("full", "bare", "noop"), required=True)
    parser.add_argument("--without", action="append", default=[], help="leave this middleware class out of full")
    args = parser.parse_args(argv)
    configure_logging(args.log_format)
    catalog = Catalog.from_csv(DEFAULT_CATALOG, category_names())
    config = read_config(ServerConfig, args)
    # As libs/runtime/server.py builds it, load shedding included.
    stack = server_middleware(
        "recommendations", access_log_interval=args.access_log_interval, max_in_flight=config.max_concurrent_rpcs
    )
    full = [m for m in stack if type(m).__name__ not in args.without]
    middleware = {"full": full, "bare": [], "noop": [Middleware()]}[args.variant]
    server = build_server(config, catalog, middleware=middleware)
    asyncio.run(server.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
