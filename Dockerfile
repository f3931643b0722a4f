# sglang-mixkv serving image: the official SGLang 0.5.17 image plus this package.
#
#   docker build -t sglang-mixkv .
#   docker run --gpus all --ipc=host --shm-size 32g -p 30000:30000 sglang-mixkv --plan ma-offset
#
# The server listens on 0.0.0.0, so it refuses to start without a key: pass one
# (`export MIXKV_API_KEY=...`, then `docker run -e MIXKV_API_KEY ...`) and every endpoint
# but /health and /metrics needs "Authorization: Bearer KEY"; MIXKV_ADMIN_API_KEY is the
# only key that opens the admin routes (/flush_cache, /pause_generation, weight updates).
# `--allow-unauthenticated` after the image name serves without keys.
#
# Any further argument goes to `python -m sglang_mixkv.serve` and from there to
# sglang.launch_server (e.g. --max-running-requests 128 --mem-fraction-static 0.85).
# Model folders (config + tokenizer; weights are dummy unless --weights random) are
# written under /models; mount a volume there to keep them.
ARG SGLANG_IMAGE=lmsysorg/sglang:v0.5.17-cu130
FROM ${SGLANG_IMAGE}

WORKDIR /opt/sglang-mixkv
COPY pyproject.toml README.md ./
COPY sglang_mixkv ./sglang_mixkv
COPY harness ./harness
COPY mixkv_bench ./mixkv_bench
# The image already has sglang, torch and flashinfer; this adds only our package, its
# plugin entry point (SGLang loads it in every process) and its light dependencies.
# PIP_BREAK_SYSTEM_PACKAGES: the image's Python may be marked "externally managed"
# (PEP 668), which makes a plain `pip install` refuse; pips without PEP 668 ignore it.
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir . \
 && python3 -c "import sglang_mixkv.sglang_seams.mixkv.pools, sglang_mixkv.sglang_seams.mixkv.triton, importlib.metadata as m; \
assert any(e.name == 'mixkv' for e in m.entry_points(group='sglang.srt.plugins'))"

ENV MIXKV_SIZE=paper \
    MIXKV_MODELS=/models
VOLUME ["/models"]
EXPOSE 30000
# Start-up writes the model folder and initialises SGLang; allow it time.
HEALTHCHECK --interval=30s --timeout=10s --start-period=900s --retries=3 \
  CMD curl -fsS http://127.0.0.1:30000/health || exit 1
ENTRYPOINT ["python3", "-m", "sglang_mixkv.serve", "--host", "0.0.0.0", "--port", "30000"]
CMD ["--plan", "ma-offset"]
