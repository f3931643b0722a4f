"""Patch: on a machine without CUDA, SGLang's subprocesses are forked, not spawned.

SGLang 0.5.17's launcher sets the ``spawn`` start method for every process it starts
(scheduler ranks, detokenizer: ``_set_envs_and_config``, ``entrypoints/engine.py:1670``)
because CUDA cannot be initialised again in a forked child. A spawned child re-imports
SGLang, torch and every model module the launcher has already imported (the scheduler's
imports are most of a CPU server's start-up: some 15-25 s of one core each on a 2-core
box). Without CUDA there is nothing a fork would share that a child must not: the
launcher has started no thread, event loop or socket when it starts them
(``Engine._launch_subprocesses``, ``entrypoints/engine.py:1025``: the schedulers at
:1092, the detokenizer at :1158, then the tokenizer manager and the HTTP server; the
only thread, the Rust server's watchdog at :1143, is not on this path), and each child
opens its own sockets.

``MIXKV_SPAWN=1`` keeps SGLang's ``spawn``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os

logger = logging.getLogger(__name__)

#: the function that sets the start method, after the logger and before any process
SET_ENVS = "sglang.srt.entrypoints.engine._set_envs_and_config"
OPT_OUT = "MIXKV_SPAWN"


def fork_children(*_args, **_kwargs) -> None:
    """AFTER hook: replace SGLang's ``spawn`` with ``fork`` (this process only; registered
    only where torch sees no CUDA)."""
    if os.environ.get(OPT_OUT, "") not in ("", "0"):
        return
    multiprocessing.set_start_method("fork", force=True)
    logger.info("mixkv: no CUDA, SGLang's subprocesses are forked (%s=1 spawns them)", OPT_OUT)
