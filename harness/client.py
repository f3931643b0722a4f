"""One streaming request over HTTP, timed: SGLang ``/generate``, OpenAI ``/v1/completions``
or OpenAI ``/v1/chat/completions``.

Timing model (all times are seconds on the run's monotonic clock, relative to the start
of the level the request belongs to):

* ``due``   when the workload says the request should start (0 for "all at once");
* ``sent``  when a concurrency slot was free and the request was sent;
* ``first`` when the first chunk carrying at least one output token arrived;
* ``done``  when the request ended (``[DONE]``, error, timeout or cancellation).

``ttft = first - sent`` and ``ttft_from_due = first - due`` (same for ``e2e``), so queueing
for a slot is visible separately from server latency.

Inter-token latency: the ITL list has one entry per output token after the first chunk.
A chunk that brings ``k`` new tokens after a gap ``g`` adds ``k`` entries of ``g / k``
(tokens in the first chunk beyond the first one get no entry: they arrived with it).
Hence ``sum(itl) == t(last token chunk) - first`` exactly. Token counts per chunk come
from the server: ``meta_info.completion_tokens`` (cumulative) for ``/generate``;
``choices[0].token_ids`` for OpenAI when the server returns them (we ask with
``return_token_ids``, which SGLang and vLLM honour), else one token per chunk; for chat,
the cumulative ``usage.completion_tokens`` each chunk carries when asked with
``stream_options.continuous_usage_stats`` (SGLang, vLLM), else one token per content delta.

Lengths are checked against the server's own counts (``meta_info.prompt_tokens`` /
``completion_tokens``; OpenAI ``usage``); a difference from the requested lengths sets
``mismatch`` (the request still counts as successful, the report counts mismatches). A chat
prompt is the model's chat template around the message, so its ``prompt_tokens`` is the
server's count (``input_len`` plus the template's tokens) and is not checked.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

import aiohttp

from harness.workload import Request
from sglang_mixkv.defaults import auth_headers

try:  # a faster parser when present (SGLang installs it); plain json otherwise
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    import json

    _loads = json.loads

READ_BUFSIZE = 2**24  # 16 MiB: one SSE line of a long-context stream can be large


class StreamError(Exception):
    """The server reported an error inside the stream."""


@dataclass
class Record:
    """Everything measured about one request; one JSONL line in ``requests.jsonl``."""

    label: str
    level: int  # max concurrency of the level
    rate: float | None  # requests/s of the level; None = all due at once
    index: int
    warmup: bool
    api: str
    input_len: int  # requested
    output_len: int  # requested
    due: float
    repeat: int = 0  # which run of the level (0-based; a level runs --repeats times)
    sent: float | None = None
    first: float | None = None
    done: float | None = None
    ttft: float | None = None
    ttft_from_due: float | None = None
    e2e: float | None = None
    e2e_from_due: float | None = None
    prompt_tokens: int | None = None  # server's counts
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    stream_tokens: int = 0  # output tokens seen in the stream
    chunks: int = 0  # chunks that carried output tokens
    itl: list[float] = field(default_factory=list)
    ok: bool = False
    status: int | None = None
    error: str | None = None
    cancelled: bool = False
    mismatch: str | None = None

    def finish(self, now: float) -> None:
        """Set ``done`` and the derived latencies, then the length check."""
        self.done = now
        if self.sent is not None:
            self.e2e, self.e2e_from_due = now - self.sent, now - self.due
        if self.first is not None and self.sent is not None:
            self.ttft, self.ttft_from_due = self.first - self.sent, self.first - self.due
        if self.ok:
            bad = []
            if (self.prompt_tokens is not None and self.api != ChatApi.name
                    and self.prompt_tokens != self.input_len):
                bad.append(f"prompt_tokens {self.prompt_tokens} != {self.input_len}")
            out = self.completion_tokens if self.completion_tokens is not None else self.stream_tokens
            if out != self.output_len:
                bad.append(f"completion_tokens {out} != {self.output_len}")
            self.mismatch = "; ".join(bad) or None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["itl"] = [round(x, 7) for x in self.itl]
        return d


class Api(Protocol):
    """What the client needs to know about one HTTP API."""

    name: str  # "generate" | "openai" | "chat"
    path: str

    def payload(self, req: Request) -> dict: ...

    def parse(self, data: bytes) -> dict: ...

    def update(self, ev: dict, rec: Record) -> int:
        """Fold one parsed event into ``rec``; return output tokens streamed so far."""


class GenerateApi:
    """SGLang's native ``POST /generate`` with ``input_ids``."""

    name, path = "generate", "/generate"

    def payload(self, req: Request) -> dict:
        return {
            "input_ids": req.input_ids,
            "sampling_params": {"max_new_tokens": req.output_len, "temperature": 0.0,
                                "ignore_eos": True},
            "stream": True,
        }

    @staticmethod
    def parse(data: bytes) -> dict:
        """One event. SGLang puts the growing ``output_ids``/``text`` first and
        ``meta_info`` (all we need) last, so parse just that tail when it is a complete
        JSON object; anything else (no ``meta_info``, another key after it, an ``error``
        key) is parsed whole. Cuts the client's CPU per token by ~30% on long outputs."""
        i = data.rfind(b'"meta_info":')
        if i > 0 and data.endswith(b"}") and b'"error":' not in data:
            try:
                meta = _loads(data[i + 12:-1])
                if isinstance(meta, dict):
                    return {"meta_info": meta}
            except ValueError:
                pass
        return _loads(data)

    def update(self, ev: dict, rec: Record) -> int:
        """Fold one event into ``rec``; return output tokens streamed so far."""
        meta = ev.get("meta_info") or {}
        rec.prompt_tokens = meta.get("prompt_tokens", rec.prompt_tokens)
        rec.completion_tokens = meta.get("completion_tokens", rec.completion_tokens)
        rec.cached_tokens = meta.get("cached_tokens", rec.cached_tokens)
        rec.stream_tokens = rec.completion_tokens or 0
        return rec.stream_tokens


def _read_usage(usage: dict, rec: Record) -> None:
    """An OpenAI ``usage`` object's counts into ``rec`` (completions and chat alike)."""
    rec.prompt_tokens = usage.get("prompt_tokens")
    rec.completion_tokens = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details") or {}
    rec.cached_tokens = details.get("cached_tokens", rec.cached_tokens)


class OpenAIApi:
    """OpenAI-compatible ``POST /v1/completions`` (SGLang, vLLM) with a token-id prompt."""

    name, path = "openai", "/v1/completions"

    def __init__(self, model: str = "default"):
        self.model = model

    def payload(self, req: Request) -> dict:
        return {
            "model": self.model, "prompt": req.input_ids, "max_tokens": req.output_len,
            "temperature": 0.0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, "return_token_ids": True,
        }

    parse = staticmethod(_loads)

    def update(self, ev: dict, rec: Record) -> int:
        for choice in ev.get("choices") or []:
            ids = choice.get("token_ids")
            rec.stream_tokens += len(ids) if ids is not None else 1
        if usage := ev.get("usage"):
            _read_usage(usage, rec)
        return rec.stream_tokens


class ChatApi:
    """OpenAI-compatible ``POST /v1/chat/completions``: one user message whose text is the
    prompt's ids as words (``t{id}``, our models' vocabulary, so the server runs exactly
    those ids inside its chat template; other tokenizers get text of about that length)."""

    name, path = "chat", "/v1/chat/completions"

    def __init__(self, model: str = "default"):
        self.model = model

    def payload(self, req: Request) -> dict:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": " ".join(f"t{i}" for i in req.input_ids)}],
            "max_tokens": req.output_len, "temperature": 0.0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }

    parse = staticmethod(_loads)

    def update(self, ev: dict, rec: Record) -> int:
        if usage := ev.get("usage"):
            _read_usage(usage, rec)
            rec.stream_tokens = rec.completion_tokens or 0
        else:  # a server without continuous usage: one token per content delta
            rec.stream_tokens += sum(
                1 for c in ev.get("choices") or [] if (c.get("delta") or {}).get("content"))
        return rec.stream_tokens


API_NAMES = ("generate", "openai", "chat")


def make_api(name: str, model: str = "default") -> Api:
    """The client for ``--api NAME``."""
    if name == GenerateApi.name:
        return GenerateApi()
    if name == OpenAIApi.name:
        return OpenAIApi(model)
    if name == ChatApi.name:
        return ChatApi(model)
    raise ValueError(f"unknown API {name!r}; expected one of {', '.join(API_NAMES)}")


def _error_text(ev: dict) -> str | None:
    err = ev.get("error")
    if err is None and ev.get("object") == "error":
        err = ev
    if err is None:
        return None
    return str(err.get("message", err)) if isinstance(err, dict) else str(err)


async def _stream(session: aiohttp.ClientSession, url: str, api: Api, req: Request,
                  rec: Record, clock: Callable[[], float]) -> None:
    async with session.post(url + api.path, json=api.payload(req)) as resp:
        rec.status = resp.status
        if resp.status != 200:
            body = (await resp.text())[:500]
            raise StreamError(f"HTTP {resp.status}: {body.strip()}")
        seen, last = 0, 0.0
        async for raw in resp.content:
            now = clock()
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separator, SSE comment or other field
            data = line[5:].strip()
            if data == b"[DONE]":
                rec.ok = True
                return
            ev = api.parse(data)
            if (msg := _error_text(ev)) is not None:
                raise StreamError(f"server error in stream: {msg}")
            n = api.update(ev, rec)
            if n > seen:
                if rec.first is None:
                    rec.first = now
                else:
                    k = n - seen
                    rec.itl.extend([(now - last) / k] * k)
                last, seen = now, n
                rec.chunks += 1
        raise StreamError("stream ended without [DONE]")


async def send(session: aiohttp.ClientSession, url: str, api: Api, req: Request, rec: Record,
               timeout: float | None, clock: Callable[[], float]) -> Record:
    """Send ``req`` now and fill ``rec``; never raises except ``CancelledError``.

    Failures (HTTP status, dropped connection, error event, timeout) end up in
    ``rec.error`` with ``rec.ok = False``. On cancellation ``rec`` is finished with
    ``cancelled = True`` before the ``CancelledError`` propagates, so the caller can
    still write it.
    """
    rec.sent = clock()
    try:
        async with asyncio.timeout(timeout):
            await _stream(session, url, api, req, rec, clock)
    except TimeoutError:
        rec.error = f"timeout: no end of stream after {timeout:g} s"
    except asyncio.CancelledError:
        rec.error, rec.cancelled = "cancelled", True
        rec.finish(clock())
        raise
    except (StreamError, aiohttp.ClientError, OSError, ValueError) as e:
        rec.error = str(e) if isinstance(e, StreamError) else f"{type(e).__name__}: {e}"
    rec.ok = rec.ok and rec.error is None
    rec.finish(clock())
    return rec


def make_session(concurrency: int, api_key: str | None = None) -> aiohttp.ClientSession:
    """A session with no connection cap below ``concurrency`` and no global timeout
    (per-request timeouts are applied by :func:`send`); every request carries
    ``api_key`` when one is given."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(concurrency, 100), force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        read_bufsize=READ_BUFSIZE,
        headers=auth_headers(api_key),
    )
