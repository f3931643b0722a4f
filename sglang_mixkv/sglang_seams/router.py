"""Seam: what we must know about ``sglang-router`` 0.3.2 (SGLang's data-parallel router,
``pip install sglang-router==0.3.2``, the newest release on PyPI beside SGLang 0.5.17).

Found by running it (``tests/server/test_router.py`` keeps each finding true):

* ``RouterArgs.api_key`` is both the key the router demands of clients and the key it
  sends to its servers; so one key opens the data plane of every server behind it.
* Without control-plane keys, that same key also reaches the router's worker management
  (``POST /workers`` adds a server, ``DELETE`` removes one): a user key could reconfigure
  the deployment. ``control_plane_api_keys`` entries ``(id, name, key, "admin")`` move
  those routes (``/workers``, ``/flush_cache``, ``/wasm``, ...) behind the admin key, and
  the user key gets 401 there.
* The router forwards none of SGLang's admin routes (``/pause_generation``, weight
  updates, ...: 404) and its ``/flush_cache`` calls every server with the *user* key, so
  our servers refuse it (401): a flush goes to each server directly with its admin key.
* The router has no ``/server_info`` or ``/model_info``; it has ``/get_model_info``.
* ``/health`` answers 200 as soon as the router listens, but it registers its workers in
  the background and until then answers requests with 503 ("no available workers");
  ``/readiness`` (no key) reports ``healthy_workers``: our launchers wait until it counts
  every server (``harness.server.router_ready``; a test that did not, failed under load).

Keys are passed in-process (``RouterArgs``), never on a command line.
"""

from __future__ import annotations

from typing import Any

ROUTER_VERSION = "0.3.2"
POLICIES = ("cache_aware", "round_robin", "random", "power_of_two")


def router_args(workers: list[str], host: str, port: int, policy: str,
                api_key: str | None, admin_api_key: str | None) -> Any:
    """``sglang_router`` 's ``RouterArgs`` for a plain (not prefill/decode) router."""
    from sglang_router.router_args import RouterArgs

    control = [("admin", "admin", admin_api_key, "admin")] if admin_api_key else []
    return RouterArgs(worker_urls=list(workers), host=host, port=port, policy=policy,
                      api_key=api_key, control_plane_api_keys=control)


def run(args: Any) -> None:
    """Start the router; blocks until it is stopped."""
    from sglang_router.launch_router import launch_router

    launch_router(args)
