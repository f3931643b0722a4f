"""Load generator for LLM serving benchmarks over HTTP (SGLang ``/generate`` or OpenAI
``/v1/completions``): the MixAttention paper's serving test and smaller CPU profiles.

Data flows one way; each module holds one idea:

    workload  seeded token-id prompts of exact lengths, arrival times, named profiles
    client    one timed streaming request -> Record
    runner    warm-up, concurrency levels, cache flushes, records appended to JSONL
    metrics   records -> per-level throughput and latency statistics (pandas)
    report    summaries -> CSV, Markdown, PNG; several runs side by side
    sampler   the server's /metrics timeline while a run goes on; what bounded each level
    sysinfo   provenance: command, commit, versions, hardware
    server    start a server command in its own process group and tear it down
    overhead  how many streamed tokens/s the harness itself absorbs
    anchor    the same workload through SGLang's bench_serving, for comparison

Nothing here imports sglang: any server that speaks one of the two APIs can be measured.
CLI: ``python -m harness {run,report,overhead,anchor} --help``.
"""
