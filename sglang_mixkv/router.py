"""``python -m sglang_mixkv.router``: SGLang's router in front of several of our servers
(data parallelism: each server holds the whole model and its own KV pools).

    MIXKV_API_KEY=... MIXKV_ADMIN_API_KEY=... python -m sglang_mixkv.serve --port 30001 &
    MIXKV_API_KEY=... MIXKV_ADMIN_API_KEY=... python -m sglang_mixkv.serve --port 30002 &
    MIXKV_API_KEY=... MIXKV_ADMIN_API_KEY=... python -m sglang_mixkv.router --port 30000 \\
        --workers http://127.0.0.1:30001 http://127.0.0.1:30002

The keys come from the environment only. The users' key opens the router's data plane
(and is what it sends to the servers); the admin key alone manages the router's workers.
A router that has a users' key but no admin key is refused: sglang-router would let the
users' key add and remove servers (``sglang_seams/router.py``).
"""

from __future__ import annotations

import argparse
import os
import sys

from sglang_mixkv.defaults import ADMIN_API_KEY_ENV, API_KEY_ENV, REDACTED
from sglang_mixkv.serve import is_loopback
from sglang_mixkv.sglang_seams import router as seam


def check_keys(host: str, api_key: str | None, admin_api_key: str | None,
               allow_unauthenticated: bool) -> None:
    """Raise ValueError for a router that would let a users' key (or anyone) reconfigure it."""
    if api_key and not admin_api_key:
        raise ValueError(f"{API_KEY_ENV} is set but {ADMIN_API_KEY_ENV} is not: sglang-router "
                         "would let the users' key add and remove servers")
    if not api_key and not is_loopback(host) and not allow_unauthenticated:
        raise ValueError(f"refusing to listen on {host} without {API_KEY_ENV} and "
                         f"{ADMIN_API_KEY_ENV} (or pass --allow-unauthenticated)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sglang_mixkv.router", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", nargs="+", required=True, metavar="URL",
                    help="our servers' base URLs")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--policy", default="cache_aware", choices=seam.POLICIES,
                    help="sglang-router's routing policy (default cache_aware: a request goes "
                    "to the server whose radix tree holds most of its prefix, unless loads differ)")
    ap.add_argument("--allow-unauthenticated", action="store_true",
                    help="listen beyond loopback without keys (refused otherwise)")
    ap.add_argument("--dry-run", action="store_true", help="print the settings and exit")
    a = ap.parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV) or None
    admin_key = os.environ.get(ADMIN_API_KEY_ENV) or None
    try:
        check_keys(a.host, api_key, admin_key, a.allow_unauthenticated)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        keys = ", ".join(f"{k}={REDACTED}" for k, v in ((API_KEY_ENV, api_key),
                                                       (ADMIN_API_KEY_ENV, admin_key)) if v)
        print(f"sglang-router {seam.ROUTER_VERSION} on {a.host}:{a.port}, policy {a.policy}, "
              f"workers {' '.join(a.workers)}; keys: {keys or 'none'}")
        return 0
    seam.run(seam.router_args([w.rstrip("/") for w in a.workers], a.host, a.port, a.policy,
                              api_key, admin_key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
