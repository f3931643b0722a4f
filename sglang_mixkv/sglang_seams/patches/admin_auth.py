"""Patch: inference keys cannot control the server, and keys stay out of argv, logs and
``/server_info`` (SGLang 0.5.17).

**Admin routes.** SGLang marks 39 routes ``AuthLevel.ADMIN_OPTIONAL``
(``entrypoints/http_server.py``: ``/pause_generation``, ``/flush_cache``,
``/update_weights_from_disk``, ``/release_memory_occupation``, ...). Its auth middleware
(``utils/auth.py`` ``decide_request_auth``) opens them with the ordinary ``--api-key``
when no ``--admin-api-key`` is set: any client that may send a request may also pause,
reconfigure or replace the server. Its ``ADMIN_FORCE`` level (admin key only, 403 without
one) is declared but used by no route (``http_server.py:2056-2062``). The AROUND hook
:func:`admin_routes_need_the_admin_key` treats every ``ADMIN_OPTIONAL`` route as
``ADMIN_FORCE`` whenever the server has any key: the admin key opens them, nothing else
does (401 with a wrong or missing key, 403 when no admin key is configured). A server
with no key at all keeps SGLang's behaviour (everything open), which ``serve`` allows on
loopback addresses only.

Two routes that change the server carry no mark at all, so SGLang's middleware opens them
to any key (``NORMAL``): ``/load_lora_adapter_from_tensors`` (``http_server.py:1530``;
its siblings ``/load_lora_adapter`` and ``/unload_lora_adapter`` are marked) and
``/set_trace_level`` (``:1159``, the process's trace level). :data:`UNMARKED_ADMIN_ROUTES`
treats them as admin routes too.

**Keys out of argv.** SGLang reads ``--api-key`` / ``--admin-api-key`` from its command
line, where every process listing shows them. ``serve`` passes them in the environment
(``MIXKV_API_KEY``, ``MIXKV_ADMIN_API_KEY``) instead, and the BEFORE hook
:func:`keys_from_environment` on ``ServerArgs.check_server_args`` (called right after
the plugins load, ``entrypoints/engine.py:1052-1054``, before the HTTP middleware is
built from the same object, ``http_server.py:2506-2521``) fills them in.

**Keys out of logs and /server_info.** SGLang logs ``f"{server_args=}"``
(``engine.py:1059``) and returns ``dataclasses.asdict(server_args)``, the scheduler's
copy of its attributes (the override log included) and more from ``/server_info``
(``http_server.py:781-800``, through ``msgspec_to_builtins``, imported by name at
``:183``): AFTER hooks on ``ServerArgs.__repr__`` and on that name replace the key values.
The keys stay in ``ServerArgs`` because SGLang's own warm-up request authenticates with
``server_args.api_key`` (``http_server.py:2161-2165``).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from sglang_mixkv.defaults import (ADMIN_API_KEY_ENV, API_KEY_ENV, SECRET_FIELDS, redact_server_info,
                                   redact_text)

DECIDE = "sglang.srt.utils.auth.decide_request_auth"
CHECK_ARGS = "sglang.srt.server_args.ServerArgs.check_server_args"
ARGS_REPR = "sglang.srt.server_args.ServerArgs.__repr__"
SERVER_INFO_JSON = "sglang.srt.entrypoints.http_server.msgspec_to_builtins"


#: Routes that reconfigure the server but carry no ``auth_level`` mark in SGLang 0.5.17.
UNMARKED_ADMIN_ROUTES = ("/load_lora_adapter_from_tensors", "/set_trace_level")


def admin_routes_need_the_admin_key(original: Callable, *args: Any, **kwargs: Any):
    """AROUND ``decide_request_auth(*, method, path, authorization_header, api_key,
    admin_api_key, auth_level)``: ADMIN_OPTIONAL, and the unmarked admin routes, become
    ADMIN_FORCE on a server with a key."""
    from sglang.srt.utils.auth import AuthLevel

    admin = (kwargs.get("auth_level") == AuthLevel.ADMIN_OPTIONAL
             or kwargs.get("path") in UNMARKED_ADMIN_ROUTES)
    if admin and (kwargs.get("api_key") or kwargs.get("admin_api_key")):
        kwargs["auth_level"] = AuthLevel.ADMIN_FORCE
    return original(*args, **kwargs)


def keys_from_environment(self: Any, *args: Any, **kwargs: Any) -> None:
    """BEFORE ``ServerArgs.check_server_args``: a key not given on the command line is
    read from ``MIXKV_API_KEY`` / ``MIXKV_ADMIN_API_KEY``, through ``ServerArgs.override``
    (``server_args.py:8548``: after resolution the fields are read-only)."""
    keys = {}
    for field, env in (("api_key", API_KEY_ENV), ("admin_api_key", ADMIN_API_KEY_ENV)):
        if not getattr(self, field) and os.environ.get(env):
            keys[field] = os.environ[env]
    if keys:
        self.override("sglang-mixkv: keys from the environment", **keys)
    return None


def repr_without_keys(result: str, self: Any, *args: Any, **kwargs: Any) -> str:
    """AFTER ``ServerArgs.__repr__``."""
    return redact_text(result, *(getattr(self, f, None) for f in SECRET_FIELDS))


def json_without_keys(result: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER ``http_server.msgspec_to_builtins``, which builds ``/server_info``'s body
    (and a few admin answers): secret fields replaced wherever they are nested."""
    return redact_server_info(result)
