"""A small fake LLM server (aiohttp) for the harness's fault tests.

Speaks enough of SGLang (``/generate`` streaming, ``/flush_cache``, ``/server_info``,
``/model_info``, ``/health``) and of the OpenAI API (``/v1/completions`` and
``/v1/chat/completions`` streaming, the chat template being three tokens around the words,
``/v1/models``) to be measured, and can misbehave on demand:

    --fault http500|drop|stall|error   applied to every K-th request (--fault-every K),
                                       after --fault-after tokens for drop/stall/error
    --die-after N                      the process exits (os._exit) once N requests have
                                       finished, cutting every stream in flight
    --token-delay S                    seconds between chunks (chunk k is due k delays after
                                       the request arrived, so late wake-ups don't accumulate)
    --first-delay S                    seconds before the first chunk (default: --token-delay),
                                       so TTFT and the gaps after it can be injected apart
    --tokens-per-chunk K               output tokens per chunk (ITL splitting)
    --admin-key K / --flush-busy       ``/flush_cache`` wants bearer K (401 otherwise) / never
                                       flushes (400, as SGLang while requests run)
    --metrics                          serve SGLang-named Prometheus ``/metrics`` (else 404, like
                                       SGLang without --enable-metrics): running = streams in
                                       flight, global pool usage = running / --pool-requests
    --context N                        ``/v1/models`` says ``max_model_len`` N (default 4096)

``cached_tokens`` is ``prompt_len - 1`` for a prompt already seen since the last
``/flush_cache``, else 0. Run: ``python tests/harness_stub.py --port 0``; it prints
``READY <port>`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from aiohttp import web


class Stub:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.received = 0
        self.finished = 0
        self.seen: set[int] = set()
        self.inflight = 0
        self.registry = self.gauges = None
        if a.metrics:
            from prometheus_client import CollectorRegistry, Counter, Gauge

            self.registry = CollectorRegistry()
            labels = {"model_name": "stub", "engine_type": "unified"}
            self.gauges = {n: Gauge(f"sglang:{n}", n, list(labels), registry=self.registry).labels(**labels)
                           for n in ("num_running_reqs", "num_queue_reqs", "full_token_usage")}
            self.generated = Counter("sglang:generation_tokens", "tokens", list(labels),
                                     registry=self.registry).labels(**labels)
        self.model_dir = tempfile.mkdtemp(prefix="harness-stub-")
        (Path(self.model_dir) / "config.json").write_text(json.dumps({"vocab_size": a.vocab}))

    # ---- helpers -------------------------------------------------------------------
    def fault_for(self, n: int) -> str | None:
        return self.a.fault if self.a.fault and n % self.a.fault_every == 0 else None

    def cached(self, ids: list[int]) -> int:
        key = hash(tuple(ids))
        hit = key in self.seen
        self.seen.add(key)
        return len(ids) - 1 if hit else 0

    async def stream(self, request: web.Request, ids: list[int], max_new: int, fmt) -> web.StreamResponse:
        self.received += 1
        fault = self.fault_for(self.received)
        if any(not 0 <= i < self.a.vocab for i in ids):
            return web.Response(status=400, text="token id out of range")
        if fault == "http500":
            return web.Response(status=500, text="stub: injected 500")
        cached = self.cached(ids)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.inflight += 1
        try:
            return await self._chunks(request, resp, ids, max_new, fmt, fault, cached)
        finally:
            self.inflight -= 1

    async def _chunks(self, request, resp, ids, max_new, fmt, fault, cached) -> web.StreamResponse:
        n, k = 0, self.a.tokens_per_chunk
        loop = asyncio.get_running_loop()
        start, due = loop.time(), 0.0  # chunks keep to a schedule: late sleeps don't add up
        while n < max_new:
            if fault in ("drop", "stall", "error") and n >= self.a.fault_after:
                if fault == "drop":
                    request.transport.abort()
                    return resp
                if fault == "stall":
                    await asyncio.sleep(3600)
                await resp.write(b'data: {"error": {"message": "stub: injected error"}}\n\n')
                break
            due += self.a.first_delay if n == 0 and self.a.first_delay is not None else self.a.token_delay
            if due:
                await asyncio.sleep(max(0.0, start + due - loop.time()))
            prev, n = n, min(n + k, max_new)
            if self.gauges:
                self.generated.inc(n - prev)
            ev = fmt(prev, n, len(ids), cached, n == max_new)
            await resp.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
        if fmt in (self.openai_chunk, self.chat_chunk) and fault != "error":
            usage = {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n,
                     "prompt_tokens_details": {"cached_tokens": cached}}
            await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        self.finished += 1
        if self.a.die_after and self.finished >= self.a.die_after:
            os._exit(1)
        return resp

    def generate_chunk(self, prev: int, n: int, plen: int, cached: int, last: bool) -> dict:
        return {"text": None, "output_ids": [3 + i % (self.a.vocab - 3) for i in range(n)],
                "meta_info": {"id": "stub", "prompt_tokens": plen, "completion_tokens": n,
                              "cached_tokens": cached,
                              "finish_reason": {"type": "length", "length": n} if last else None}}

    def openai_chunk(self, prev: int, n: int, plen: int, cached: int, last: bool) -> dict:
        ids = [3 + i % (self.a.vocab - 3) for i in range(prev, n)]
        return {"id": "stub", "object": "text_completion", "model": "stub",
                "choices": [{"index": 0, "text": "".join(f"t{i} " for i in ids), "token_ids": ids,
                             "finish_reason": "length" if last else None}]}

    def chat_chunk(self, prev: int, n: int, plen: int, cached: int, last: bool) -> dict:
        ids = [3 + i % (self.a.vocab - 3) for i in range(prev, n)]
        return {"id": "stub", "object": "chat.completion.chunk", "model": "stub",
                "choices": [{"index": 0, "delta": {"content": "".join(f" t{i}" for i in ids)},
                             "finish_reason": "length" if last else None}],
                "usage": {"prompt_tokens": plen, "completion_tokens": n,
                          "total_tokens": plen + n}}

    # ---- routes --------------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        sp = body["sampling_params"]
        assert body.get("stream") and sp.get("ignore_eos"), body
        return await self.stream(request, body["input_ids"], sp["max_new_tokens"], self.generate_chunk)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert body.get("stream") and body.get("ignore_eos"), body
        return await self.stream(request, body["prompt"], body["max_tokens"], self.openai_chunk)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert body.get("stream") and body.get("ignore_eos"), body
        (msg,) = body["messages"]  # one user message of words t{id}, as the harness sends
        ids = [1, 4] + [int(w[1:]) for w in msg["content"].split()] + [5]  # a 3-token template
        return await self.stream(request, ids, body["max_tokens"], self.chat_chunk)

    async def flush(self, request: web.Request) -> web.Response:
        if self.a.no_flush:
            return web.Response(status=404)
        if self.a.flush_busy:  # what SGLang answers while requests still run
            return web.Response(status=400, text="Cache not flushed: requests are running.\n")
        if self.a.admin_key and request.headers.get("Authorization") != f"Bearer {self.a.admin_key}":
            return web.Response(status=401, text='{"error": "Unauthorized"}')
        self.seen.clear()
        return web.Response(text="Cache flushed.\n")

    async def metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import generate_latest

        self.gauges["num_running_reqs"].set(self.inflight)
        self.gauges["num_queue_reqs"].set(0)
        self.gauges["full_token_usage"].set(self.inflight / self.a.pool_requests)
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def server_info(self, request: web.Request) -> web.Response:
        return web.json_response({"stub": True, "version": "stub", "received": self.received})

    async def model_info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": self.model_dir, "is_generation": True})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "stub", "root": self.model_dir,
                                             "max_model_len": self.a.context}]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/flush_cache", self.flush)
        app.router.add_get("/health", self.health)
        app.router.add_get("/server_info", self.server_info)
        app.router.add_get("/model_info", self.model_info)
        app.router.add_get("/v1/models", self.models)
        if self.a.metrics:
            app.router.add_get("/metrics", self.metrics)
        return app


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--context", type=int, default=4096, help="/v1/models max_model_len")
    p.add_argument("--fault", choices=["http500", "drop", "stall", "error"])
    p.add_argument("--fault-every", type=int, default=3)
    p.add_argument("--fault-after", type=int, default=2)
    p.add_argument("--die-after", type=int, default=0)
    p.add_argument("--token-delay", type=float, default=0.0)
    p.add_argument("--first-delay", type=float, default=None)
    p.add_argument("--tokens-per-chunk", type=int, default=1)
    p.add_argument("--metrics", action="store_true")
    p.add_argument("--pool-requests", type=int, default=8)
    p.add_argument("--no-flush", action="store_true")
    p.add_argument("--admin-key", help="/flush_cache answers 401 without this bearer key")
    p.add_argument("--flush-busy", action="store_true", help="/flush_cache never flushes")
    return p.parse_args(argv)


async def serve(a: argparse.Namespace) -> None:
    runner = web.AppRunner(Stub(a).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", a.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(serve(parse(sys.argv[1:])))
    except KeyboardInterrupt:
        pass
