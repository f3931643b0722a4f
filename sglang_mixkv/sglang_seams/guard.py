"""Seam: work of ours inside SGLang's scheduler fails one request, never the scheduler.

SGLang 0.5.17 tears the whole server down when anything raises in its scheduler process
(``managers/scheduler.py``'s event loop: ``kill_process_tree`` on any exception), so a
bug of ours, or a request field one of our hooks reads, would take every other user's
request with it. Request fields are checked in the tokenizer process first
(``patches/validation.py``); this is the last guard behind that: per-request work of our
hooks runs inside :func:`failing_request`, which on an exception logs it and finishes
that request with an error (``Req.to_finish``, which SGLang turns into the request's
finish reason at its next output, ``managers/schedule_batch.py:1568-1575``, and then
frees its KV as for any finished request).
"""

from __future__ import annotations

import contextlib
import logging
from http import HTTPStatus
from typing import Iterator

logger = logging.getLogger(__name__)


def abort(req, what: str, error: BaseException) -> None:
    """Finish ``req`` with an internal error naming ``what`` failed."""
    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    req.to_finish = FINISH_ABORT(f"sglang-mixkv: {what} failed for this request "
                                 f"({type(error).__name__}); the server goes on",
                                 HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError")


class Outcome:
    """Whether the guarded block failed (its request is then aborted)."""

    failed = False


@contextlib.contextmanager
def failing_request(req, what: str) -> Iterator[Outcome]:
    """Run ``what`` for ``req``: an exception (not a KeyboardInterrupt or SystemExit)
    aborts ``req`` alone, is logged with its traceback and sets the yielded
    ``Outcome.failed``."""
    outcome = Outcome()
    try:
        yield outcome
    except Exception as e:  # noqa: BLE001 - the point: no request takes the scheduler down
        logger.exception("sglang-mixkv: %s failed for request %s; aborting that request",
                         what, getattr(req, "rid", "?"))
        outcome.failed = True
        abort(req, what, e)
