"""The load: warm-up, then one closed-loop level per concurrency, records to JSONL.

A level with concurrency ``N`` sends the workload's requests at their due times
(all at once, or Poisson at ``rate``) with at most ``N`` in flight. Every request that
was sent is appended to ``requests.jsonl`` the moment it ends (one line, flushed), so a
crash or Ctrl-C loses nothing that finished; on cancellation the requests in flight are
written with ``cancelled: true``. ``meta.json`` is written before the first request and
rewritten at the end with the final ``status`` (``complete`` or ``interrupted``).

Between levels (and after warm-up) the server's prefix cache is flushed with
``POST /flush_cache`` when the server has it (SGLang); servers without it are noted in
``meta.json`` and the run goes on. Behind a router (``backends``: the servers it routes to)
the flush goes to each server directly: a router holds the users' key, not the admin key.

With ``repeats`` > 1 the whole sweep runs that many times (repeat-major: 1, 8, 32, 1, 8,
32, ...), so a drift of the machine's speed spreads over every level; each record
carries its ``repeat``, and ``meta.json``'s ``levels`` lists every level run's window
on the run's clock. Meanwhile :class:`harness.sampler.Sampler` records the server's
``/metrics`` into ``timeline.jsonl`` on the same clock (a server without it is noted
in ``meta.json``'s ``timeline`` and the run goes on).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Any

import aiohttp
from pydantic import (ConfigDict, Field, FilePath, NonNegativeFloat, NonNegativeInt,
                      PositiveFloat, PositiveInt)
from pydantic.dataclasses import dataclass
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed
from tqdm import tqdm

from harness import client, sampler, sysinfo
from sglang_mixkv.defaults import (ADMIN_API_KEY_ENV, API_KEY_ENV, auth_headers, redact_argv,
                                   redact_server_info)
from harness.workload import (IdRange, Request, arrival_offsets, load_trace, make_requests,
                              trace_requests)

JSONL = "requests.jsonl"


class StartupError(RuntimeError):
    """A run could not start (nothing was sent)."""


class ServerUnreachable(StartupError):
    """The server did not answer at the start of a run."""


class FlushError(RuntimeError):
    """The prefix cache could not be flushed between levels: the run stops (a level
    measured on a warm cache would not be the level the report claims)."""


class _Busy(Exception):
    """``/flush_cache`` answered but did not flush (SGLang refuses while requests run)."""


@dataclass(config=ConfigDict(arbitrary_types_allowed=True))
class RunConfig:
    """What one run is. Checked when built (pydantic: a ``ValidationError``, a ValueError,
    naming the field): counts and lengths positive, a level of at least one request,
    times positive, a trace file that exists; nothing is sent before that."""

    url: str
    out: Path
    label: str = "run"
    api: str = "generate"
    profile: str = "paper"
    num_prompts: PositiveInt = 300
    input_len: PositiveInt = 31_000
    output_len: PositiveInt = 1_000
    concurrency: Annotated[list[PositiveInt], Field(min_length=1)] = field(
        default_factory=lambda: [1, 8, 32, 64, 128, 300])
    rate: Annotated[float, Field(gt=0)] = math.inf  # requests/s; inf = all due at once
    warmup: NonNegativeInt = 2
    seed: int = 0
    timeout: PositiveFloat | None = 7200.0  # per request, seconds
    vocab_size: PositiveInt | None = None  # None: ask the server
    id_range: IdRange | None = None  # None: [3, vocab_size)
    model: str = "default"  # OpenAI "model" field
    flush: bool = True
    progress: bool | None = None  # None: only on a terminal
    wait: NonNegativeFloat = 0.0  # seconds to wait for the server to come up
    repeats: PositiveInt = 1  # runs of every level (run-to-run spread); repeat-major order
    metrics: bool = True  # sample the server's /metrics into timeline.jsonl
    metrics_interval: PositiveFloat = 1.0  # seconds between samples
    api_key: str | None = field(default=None, repr=False)  # never written to meta.json
    admin_api_key: str | None = field(default=None, repr=False)  # for /flush_cache only
    slo: str | None = None  # "ttft_ms=...,tpot_ms=...,e2e_ms=..." (harness.slo), for the report
    trace: FilePath | None = None  # JSON lines of lengths (+ arrival times): replaces the prompts
    trace_time_unit: PositiveFloat = 1.0  # seconds per trace timestamp unit
    shared_prefix: tuple[PositiveInt, PositiveInt] | None = None  # (groups, prefix tokens)
    max_context: PositiveInt | None = None  # None: the server's (/v1/models max_model_len)
    backends: list[str] = field(default_factory=list)  # servers behind a router at url

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"], d["rate"] = str(self.out), None if math.isinf(self.rate) else self.rate
        d["api_key"] = "***" if self.api_key else None
        d["admin_api_key"] = "***" if self.admin_api_key else None
        return d


class JsonlSink:
    """Append-only JSONL writer; each record is one flushed line."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "a", encoding="utf-8")

    def write(self, rec: client.Record) -> None:
        self.f.write(json.dumps(rec.to_json()) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


async def get_json(session: aiohttp.ClientSession, url: str, path: str) -> Any | None:
    """``GET url+path`` as JSON, or None when the server lacks it or fails."""
    try:
        async with session.get(url + path, timeout=aiohttp.ClientTimeout(total=30)) as r:
            return await r.json(content_type=None) if r.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None


async def probe(session: aiohttp.ClientSession, url: str, wait: float = 0.0) -> str:
    """Return the path that answered (``/health`` or ``/v1/models``), waiting up to
    ``wait`` seconds; raise :class:`ServerUnreachable` otherwise."""
    deadline, last = time.monotonic() + wait, "no answer"
    while True:
        for path in ("/health", "/v1/models"):
            try:
                async with session.get(url + path, timeout=aiohttp.ClientTimeout(total=10)) as r:
                    if r.status == 200:
                        return path
                    last = f"GET {path} -> HTTP {r.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
                break  # connection-level failure: no point trying the other path
        if time.monotonic() >= deadline:
            raise ServerUnreachable(f"server not reachable at {url} ({last})")
        await asyncio.sleep(1.0)


async def check_auth(session: aiohttp.ClientSession, url: str) -> None:
    """Raise :class:`StartupError` when the server refuses this session's API key (or
    its absence): ``/health`` answers without a key, ``/v1/models`` does not."""
    try:
        async with session.get(url + "/v1/models", timeout=aiohttp.ClientTimeout(total=30)) as r:
            status = r.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return
    if status in (401, 403):
        raise StartupError(f"{url} refused the run's requests (HTTP {status}): it wants an API "
                           f"key; pass --api-key KEY or set {API_KEY_ENV}")


async def model_config(session: aiohttp.ClientSession, url: str) -> dict:
    """``config.json`` of the model folder the server names (``/model_info`` for SGLang,
    ``/get_model_info`` for sglang-router, ``/v1/models`` ``root`` for vLLM or ``id``),
    when that folder is readable here; else ``{}``."""
    paths = []
    for route in ("/model_info", "/get_model_info"):
        if info := await get_json(session, url, route):
            paths.append(info.get("model_path"))
            break
    if models := await get_json(session, url, "/v1/models"):
        paths += [m.get(k) for m in models.get("data", []) for k in ("root", "id")]
    for p in filter(None, paths):
        cfg = Path(str(p)) / "config.json"
        if cfg.is_file():
            c = json.loads(cfg.read_text())
            return {**c, **(c.get("text_config") or {})}
    return {}


async def server_context(session: aiohttp.ClientSession, url: str) -> int | None:
    """The most tokens (prompt + output) one request may have: the server's own figure
    (``/v1/models`` ``max_model_len``: SGLang's context length, ``--context-length``
    included; vLLM's too), else the model folder's ``max_position_embeddings``; None if
    neither is known."""
    if models := await get_json(session, url, "/v1/models"):
        lens = [m.get("max_model_len") for m in models.get("data", [])]
        if lens and all(isinstance(n, int) and n > 0 for n in lens):
            return min(lens)
    context = (await model_config(session, url)).get("max_position_embeddings")
    return int(context) if context else None


async def discover_vocab(session: aiohttp.ClientSession, url: str) -> int | None:
    """Vocabulary size from the server's model folder (:func:`model_config`)."""
    vocab = (await model_config(session, url)).get("vocab_size")
    return int(vocab) if vocab else None


async def flush_all(session: aiohttp.ClientSession, urls: list[str],
                    admin_key: str | None = None) -> str:
    """:func:`flush_cache` on every server; ``ok`` only when every one flushed, else the
    first other answer (``refused`` or ``unsupported``)."""
    answers = [await flush_cache(session, u, admin_key) for u in urls]
    return next((a for a in answers if a != "ok"), "ok")


#: seconds a flush is retried while the server answers without flushing
FLUSH_RETRY_S = 30.0
#: what the report says when a server wants an admin key the run does not hold
FLUSH_REFUSED = ("not flushed: the server refused /flush_cache without its admin key (pass "
                 f"--admin-api-key or set {ADMIN_API_KEY_ENV}); levels after the first ran "
                 "on whatever the prefix cache held")


async def flush_cache(session: aiohttp.ClientSession, url: str,
                      admin_key: str | None = None) -> str:
    """Flush the server's prefix cache with ``admin_key`` (else with the session's own
    headers). Returns ``ok``, ``unsupported`` (no such endpoint) or ``refused`` (401/403
    and the run holds no admin key). Raises :class:`FlushError` when the admin key is
    refused, the server is unreachable, or it keeps answering without flushing for
    ``FLUSH_RETRY_S`` (SGLang refuses while requests are still running)."""
    headers = auth_headers(admin_key) if admin_key else {}

    @retry(retry=retry_if_exception_type(_Busy), stop=stop_after_delay(FLUSH_RETRY_S),
           wait=wait_fixed(0.5), reraise=True)
    async def once() -> str:
        async with session.post(url + "/flush_cache", headers=headers,
                                timeout=aiohttp.ClientTimeout(total=60)) as r:
            if r.status == 200:
                return "ok"
            if r.status in (404, 405):
                return "unsupported"
            if r.status in (401, 403) and not admin_key:
                return "refused"
            if r.status in (401, 403):
                raise FlushError(f"{url} refused /flush_cache with the admin key (HTTP {r.status})")
            raise _Busy(f"HTTP {r.status}: {(await r.text())[:200].strip()}")

    try:
        return await once()
    except _Busy as e:
        raise FlushError(f"{url}/flush_cache kept failing for {FLUSH_RETRY_S:g} s: {e}") from None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise FlushError(f"{url}/flush_cache: {type(e).__name__}: {e}") from None


async def run_level(session: aiohttp.ClientSession, cfg: RunConfig, api: client.Api,
                    reqs: list[Request], level: int, sink: JsonlSink,
                    desc: str, repeat: int = 0) -> list[client.Record]:
    """Run ``reqs`` with at most ``level`` in flight; return the records written."""
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    rate = cfg.rate if not reqs or not reqs[0].warmup else math.inf
    if reqs and reqs[0].due is not None:  # a trace's own arrival times
        rate, dues = math.nan, [r.due for r in reqs]
    else:
        dues = arrival_offsets(len(reqs), rate, cfg.seed)
    sem = asyncio.Semaphore(level)
    done: list[client.Record] = []
    hide = None if cfg.progress is None else not cfg.progress  # None: tqdm hides off a tty
    pbar = tqdm(total=len(reqs), desc=desc, unit="req", disable=hide)

    async def one(req: Request, due: float) -> None:
        rec = client.Record(cfg.label, level, rate if math.isfinite(rate) else None, req.index,
                            req.warmup, api.name, req.input_len, req.output_len, due, repeat)
        try:
            # A loop, not one sleep: uvloop (the policy SGLang's modules install on import)
            # may wake up to ~1 ms early, and ``sent >= due`` is part of the timing model.
            while (delay := due - clock()) > 0:
                await asyncio.sleep(delay)
            async with sem:
                await client.send(session, cfg.url, api, req, rec, cfg.timeout, clock)
        finally:
            if rec.done is not None:  # it was sent: keep it, whatever happened
                sink.write(rec)
                done.append(rec)
                pbar.update(1)

    try:
        async with asyncio.TaskGroup() as tg:
            for req, due in zip(reqs, dues):
                tg.create_task(one(req, float(due)))
    finally:
        pbar.close()
    return done


def _level_line(recs: list[client.Record], label: str, level: int, run: str = "") -> str:
    ok = [r for r in recs if r.ok]
    dur = max((r.done for r in recs), default=0.0) or float("nan")
    out = sum(r.completion_tokens or r.stream_tokens for r in ok)
    return (f"[{label}] c={level}{run}: {len(ok)}/{len(recs)} ok, "
            f"{len(ok) / dur:.2f} req/s, {out / dur:.1f} out tok/s, {dur:.1f} s")


def write_meta(cfg: RunConfig, meta: dict) -> None:
    (cfg.out / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


async def run(cfg: RunConfig, argv: list[str] | None = None) -> Path:
    """Run the whole sweep into ``cfg.out``; return it. Raises StartupError (nothing sent,
    no folder made: the server did not answer, the workload cannot run on it) or
    FileExistsError (``cfg.out`` already holds a run)."""
    if (cfg.out / JSONL).exists():
        raise FileExistsError(f"{cfg.out / JSONL} exists: pick a new --out")
    api = client.make_api(cfg.api, cfg.model)
    async with client.make_session(max(cfg.concurrency + [cfg.warmup]), cfg.api_key) as session:
        answered = await probe(session, cfg.url, cfg.wait)
        await check_auth(session, cfg.url)
        info_url = cfg.backends[0] if cfg.backends else cfg.url  # a router has no /server_info
        server_info = await get_json(session, info_url, "/server_info")
        model_info = await get_json(session, info_url, "/model_info")
        if cfg.id_range is None:
            vocab = cfg.vocab_size or await discover_vocab(session, cfg.url)
            if vocab is None:
                raise StartupError(
                    f"cannot discover the vocabulary size from {cfg.url}: pass --vocab-size")
            cfg.vocab_size, cfg.id_range = vocab, IdRange.for_vocab(vocab)
        context = cfg.max_context or await server_context(session, cfg.url)
        try:
            if cfg.trace is not None:
                reqs = trace_requests(load_trace(cfg.trace, cfg.trace_time_unit, context),
                                      cfg.seed, cfg.id_range)
            else:
                if context is not None and cfg.input_len + cfg.output_len > context:
                    raise StartupError(
                        f"{cfg.input_len} prompt + {cfg.output_len} output tokens exceed the "
                        f"server's context of {context}: every request would be refused")
                reqs = make_requests(cfg.num_prompts, cfg.input_len, cfg.output_len, cfg.seed,
                                     cfg.id_range, shared_prefix=cfg.shared_prefix)
        except ValueError as e:  # a TraceError, a shared prefix not shorter than the prompt
            raise StartupError(str(e)) from None
        warm = make_requests(cfg.warmup, reqs[0].input_len, reqs[0].output_len, cfg.seed,
                             cfg.id_range, warmup=True)
        cfg.out.mkdir(parents=True, exist_ok=True)  # only once the run can start
        for name, obj in (("server_info", server_info), ("model_info", model_info)):
            if obj is not None:
                (cfg.out / f"{name}.json").write_text(
                    json.dumps(redact_server_info(obj), indent=2, default=str))
        meta = {"status": "running", "label": cfg.label, "config": cfg.to_json(),
                "probe": answered, "flush": {}, "levels_done": [], "levels": [],
                "started_unix": time.time(),
                **sysinfo.collect(redact_argv(sys.argv if argv is None else argv))}
        t0 = time.perf_counter()  # the run's clock: level windows and timeline samples
        timeline = sampler.Sampler(cfg.url, cfg.out / sampler.TIMELINE, cfg.metrics_interval, t0)
        if not cfg.metrics:
            note = "no server timeline (--no-metrics)"
        elif cfg.backends:  # the servers' gauges are per server; a router has none
            note = "no server timeline: measured through a router (--backend)"
        else:
            note = await timeline.start()
        meta["timeline"] = {"file": sampler.TIMELINE if note is None else None,
                            "interval_s": cfg.metrics_interval, "note": note}
        if note:
            tqdm.write(f"[{cfg.label}] {note}")
        write_meta(cfg, meta)
        sink = JsonlSink(cfg.out / JSONL)
        try:
            if warm:
                await run_level(session, cfg, api, warm, len(warm), sink, f"{cfg.label} warm-up")
            for rep in range(cfg.repeats):
                run = f" run {rep + 1}/{cfg.repeats}" if cfg.repeats > 1 else ""
                for level in cfg.concurrency:
                    if cfg.flush and "flush_note" not in meta:
                        key = str(level) if cfg.repeats == 1 else f"{level}/{rep}"
                        meta["flush"][key] = await flush_all(session, cfg.backends or [cfg.url],
                                                             cfg.admin_api_key)
                        if meta["flush"][key] == "refused":
                            meta["flush_note"] = FLUSH_REFUSED
                            tqdm.write(f"[{cfg.label}] {FLUSH_REFUSED}")
                    timeline.mark(level, rep)
                    start = time.perf_counter() - t0
                    recs = await run_level(session, cfg, api, reqs, level, sink,
                                           f"{cfg.label} c={level}{run}", rep)
                    meta["levels"].append({"level": level, "repeat": rep, "start": start,
                                           "end": time.perf_counter() - t0})
                    timeline.mark(None)
                    if rep == cfg.repeats - 1:
                        meta["levels_done"].append(level)
                    tqdm.write(_level_line(recs, cfg.label, level, run))
            meta["status"] = "complete"
        except asyncio.CancelledError:
            meta["status"] = "interrupted"
            raise
        finally:
            await timeline.stop()
            if meta["status"] == "running":
                meta["status"] = "failed"
            meta["finished_unix"] = time.time()
            meta["timeline"]["samples"] = timeline.samples
            write_meta(cfg, meta)
            sink.close()
    return cfg.out
