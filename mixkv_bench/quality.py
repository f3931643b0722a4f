"""``python -m mixkv_bench.quality`` (``make quality``): what a layer plan, a window or an
Ada-KV budget costs in recall, measured through the real endpoint, beside what it saves
in memory and wins in throughput at paper scale.

    python -m mixkv_bench.quality --models results/quality/models/seed0 \\
        --plans standard,swa,ma,ma-offset,standard@adakv=40 [--budgets 20,24,32,40,48] \\
        [--methods adakv,snapkv,recent,random] [--adakv-window 16] [--contexts 64,128] \\
        [--layouts zoology,scattered] [--regimes agnostic,aware] [--sequences 64] \\
        [--check 16] [--out results/quality-x]

For every variant (``PLAN`` or ``PLAN@adakv=B``, as in ``make bench``; ``--budgets`` adds
``PLAN@adakv=B`` for each budget to every plan with a global producer: a budget curve whose
last point is the plan itself, the full prompt) our server serves the trained folder
``MODELS/PLAN`` (:mod:`mixkv_bench.train`) as a user runs it (``serve --model-path``;
plus the flags of :data:`mixkv_bench.forced.SERVER_FLAGS`, which change no computation).
A budget is served once per method (:data:`METHODS`), all under the same per-head budget
accounting and the same server code path: Ada-KV with the producer's queries scoring
(``adakv``), with every reader's (``adakv-readers``, where a layer reads another global
producer's KV, the only place the two can differ), the uniform per-head budget
(``snapkv``: ``--adakv-alpha 1``), and two score-free baselines, the first tokens plus the
most recent (``recent``, StreamingLLM) and a seeded random choice (``random``). Each
held-out sequence (seed :data:`SEED` + context length, never a training seed; one set per
layout and regime) is one ``POST /generate``: the prompt is its context (regime
``aware``: followed by the keys that will be asked, so Ada-KV's observation window sees
the question when it scores), and in decode the query keys are forced while the model
answers each greedily (:mod:`mixkv_bench.forced`), so every answer is read from the KV the
server kept after the prompt, its own earlier answers in context. Every server is asked
every context, layout (``zoology``: the pairs open the context; ``scattered``: anywhere in
it) and regime. One record per query goes to ``OUT/SETTING/records.jsonl``.

``--check N``: N of each setting's sequences are replayed through the plain-PyTorch
reference of the same folder (keys forced the same way, the same Ada-KV selection for
budget variants); any disagreement is reported, and the exit status is 1: the endpoint
and the reference are one model, not two.

The report (``OUT/report.md``, ``summary.csv``, ``accuracy.png``) gives accuracy per
variant, context, layout and regime, on all queries and on those whose pair lies more
than one window back ("far", which a sliding window alone cannot answer), accuracy by
distance, the budget curves (``curves.csv``, ``budget_curve.png``: far accuracy against
the kept share of the prompt per method and regime) with the smallest budget within 2
points of the full prompt, and per variant the KV bytes of one 31K + 1K request and the
projected output tokens/s on an H100 at paper scale (:mod:`mixkv_bench.capacity`,
:mod:`mixkv_bench.roofline`), with the accuracy-memory Pareto front marked per layout and
regime. An Ada-KV budget of B tokens on a C-token context is
projected as the same share of the paper's 31,000-token prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import NON_NEGATIVE, POSITIVE
from harness.server import launched_on_free_port
from harness.sysinfo import provenance_lines
from mixkv_bench import forced, recall, variants
from sglang_mixkv import plan as plans
from sglang_mixkv.defaults import API_KEY_ENV, auth_headers
from sglang_mixkv.model_folder import get_size

SEED = 20_000  # + context length: held-out sets, far from the trainer's seeds
PAPER_PROMPT = 31_000


#: how a budget variant is served: ``serve`` flags of each method (the same per-head budget
#: accounting, the same code path; the baselines are selection rules of the server's)
METHODS: dict[str, dict] = {
    "adakv": {},  # Ada-SnapKV, the producer's queries scoring
    "adakv-readers": {"scoring": "readers"},  # every layer reading the producer scores
    "snapkv": {"alpha": 1.0},  # the uniform per-head budget
    "recent": {"rule": "recent"},  # StreamingLLM: the first 4 tokens and the most recent
    "random": {"rule": "random"},  # a seeded random choice
}
REGIMES = ("agnostic", "aware")
ADAKV_WINDOW = 32  # serve's --adakv-window default: budgets must lie above it


@dataclass(frozen=True)
class Setting:
    """One served configuration of a variant."""

    label: str
    variant: str
    plan: str
    budget: int | None = None
    scoring: str = "producer"
    alpha: float = 0.2
    rule: str = "adakv"
    method: str = "full"  # a key of METHODS, or "full" (no budget: the whole prompt)
    window: int = ADAKV_WINDOW  # Ada-KV's observation window

    def serve_args(self) -> list[str]:
        if self.budget is None:
            return []
        return ["--adakv-budget", str(self.budget), "--adakv-window", str(self.window),
                "--adakv-scoring", self.scoring, "--adakv-alpha", str(self.alpha),
                "--adakv-rule", self.rule]

    def reference_budget(self):
        from mixkv_bench.reference import AdaBudget

        return None if self.budget is None else AdaBudget(
            self.budget, window=self.window, alpha=self.alpha, scoring=self.scoring,
            rule=self.rule)


def has_global_consumer(plan: plans.Plan) -> bool:
    """Whether a layer reads another global producer's KV: only then can ``readers``
    scoring differ from ``producer`` (otherwise the readers of a producer are itself)."""
    return any(plan.layers[i].source != i for i in range(len(plan))
               if plan.layers[plan.layers[i].source].kind == plans.GLOBAL)


def settings_of(variant: variants.Variant, methods: list[str] | None = None,
                num_layers: int = 12, window: int = ADAKV_WINDOW) -> list[Setting]:
    """A plan: one setting (``full``). A budget: one per method (default every one of
    :data:`METHODS`; ``adakv-readers`` only where a global consumer makes it differ)."""
    if variant.adakv_budget is None:
        return [Setting(variant.label, variant.label, variant.plan)]
    b, v = variant.adakv_budget, variant.label
    if methods is None:
        readers = has_global_consumer(variant.resolve(num_layers))
        methods = [m for m in METHODS if m != "adakv-readers" or readers]
    return [Setting(f"{v} {m}", v, variant.plan, b, method=m, window=window, **METHODS[m])
            for m in methods]


@dataclass(frozen=True)
class Probe:
    """One request: a held-out sequence's prompt (its context, and in the ``aware``
    regime the keys to be asked), its queries asked in decode (:mod:`mixkv_bench.forced`)."""

    context: int
    sequence: int
    prompt: list[int]
    keys: list[int]
    answers: list[int]
    distances: list[int]
    layout: str = "zoology"
    regime: str = "agnostic"

    @property
    def key(self) -> tuple:
        return (self.context, self.layout, self.regime, self.sequence)


def probes(task: recall.RecallTask, sequences: int) -> list[Probe]:
    """``sequences`` held-out sequences of ``task`` (one layout and one regime; seed SEED
    + context, + 1,000 for the scattered layout, + 2,000 for the aware regime: each
    (layout, regime) its own sequences, the zoology-agnostic ones those of earlier
    reports)."""
    if "mixed" in (task.layout, task.regime):
        raise ValueError("probes are drawn per layout and regime, not mixed")
    seed = SEED + task.context + 1000 * (task.layout == "scattered") + 2000 * (task.regime == "aware")
    batch = recall.heldout(task, sequences, seed)
    out = []
    for s in range(sequences):
        ids, pos = batch.ids[s].tolist(), batch.answer_pos[s].tolist()
        out.append(Probe(task.context, s, ids[:task.prompt], [ids[p - 1] for p in pos],
                         [ids[p] for p in pos], batch.distance[s].tolist(), task.layout,
                         task.regime))
    return out


def trained_task(folder: Path) -> tuple[dict, recall.RecallTask]:
    """The folder's config and the task it was trained on (config ``mixkv_weights``)."""
    if not (folder / "config.json").exists():
        raise ValueError(f"{folder}: no trained model folder (train one: python -m "
                         f"mixkv_bench.train --plan {folder.name} --out {folder})")
    cfg = json.loads((folder / "config.json").read_text())
    trained = (cfg.get("mixkv_weights") or {}).get("trained")
    if not trained:
        raise ValueError(f"{folder} has random weights, not a trained model")
    return cfg, recall.RecallTask(**trained["task"])


async def ask(url: str, ps: list[Probe], concurrency: int) -> list[dict]:
    """One request per probe; a record per query (errors kept, never raised)."""
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    headers = auth_headers(os.environ.get(API_KEY_ENV))

    async def one(session: aiohttp.ClientSession, p: Probe) -> list[dict]:
        got, error = [None] * len(p.keys), None
        async with sem:
            try:
                async with session.post(url + "/generate", json=forced.request(p.prompt, p.keys)) as r:
                    data = await r.json(content_type=None)
                    if r.status != 200:
                        error = f"HTTP {r.status}: {str(data)[:200]}"
                    else:
                        out = data["output_ids"]
                        if out[0::2] != p.keys:
                            error = f"keys not forced: {out[0::2]} (server without " \
                                    "--enable-custom-logit-processor?)"
                        got = forced.answers(out)
            except (aiohttp.ClientError, OSError, KeyError, IndexError, ValueError) as e:
                error = f"{type(e).__name__}: {e}"
        return [{"context": p.context, "layout": p.layout, "regime": p.regime,
                 "prompt_tokens": len(p.prompt), "sequence": p.sequence, "query": q,
                 "distance": p.distances[q], "answer": p.answers[q], "got": got[q],
                 "correct": error is None and got[q] == p.answers[q], "error": error}
                for q in range(len(p.keys))]

    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        rows = await asyncio.gather(*(one(session, p) for p in ps))
    return [r for row in rows for r in row]


def reference_answers(ref, p: Probe, ada) -> list[int]:
    """The reference's answers to ``p``: keys forced, answers greedy, with the Ada-KV
    selection of the prompt applied after it (as the server does)."""
    kept = ref.adakv_kept(p.prompt, ada) if ada is not None else None
    seq, got = list(p.prompt), []
    for key in p.keys:
        seq.append(key)
        got.append(int(ref.logits(seq, kept, len(p.prompt))[-1].argmax()))
        seq.append(got[-1])
    return got


def check(folder: Path, setting: Setting, ps: list[Probe], records: list[dict], n: int,
          seed: int = 0) -> list[dict]:
    """Replay ``n`` answered probes through the reference; the disagreements."""
    from mixkv_bench.reference import Reference

    ref, ada = Reference(folder), setting.reference_budget()
    served = {}
    for r in records:
        if r["error"] is None:
            served.setdefault((r["context"], r["layout"], r["regime"], r["sequence"]),
                              {})[r["query"]] = r["got"]
    sample = random.Random(seed).sample([p for p in ps if p.key in served],
                                        min(n, len(served)))
    bad = []
    for p in sample:
        server = [served[p.key][q] for q in range(len(p.keys))]
        want = reference_answers(ref, p, ada)
        if want != server:
            bad.append({"setting": setting.label, "context": p.context, "layout": p.layout,
                        "regime": p.regime, "sequence": p.sequence, "server": server,
                        "reference": want})
    return bad


def serve_command(folder: Path, setting: Setting, port: int) -> list[str]:
    return [sys.executable, "-m", "sglang_mixkv.serve", "--model-path", str(folder),
            "--port", str(port), *setting.serve_args(), *forced.SERVER_FLAGS]


def evaluate(roots: list[Path], specs: list[str], contexts: list[int] | None, sequences: int,
             out: Path, check_n: int, concurrency: int = 8, log=print,
             resume: bool = False, layouts: list[str] | None = None,
             regimes: list[str] = ("agnostic",), methods: list[str] | None = None,
             window: int = ADAKV_WINDOW) -> tuple[list[dict], list[dict]]:
    """Serve and ask every setting of every variant in every root that has its folder
    (``ROOT/PLAN``; one root per training seed); returns all records (``models``: the
    root's name) and every disagreement. Each server is asked every context, layout
    (default: the trained one; both for a model trained on ``mixed``) and regime.
    ``resume``: a setting whose records are already in ``out`` is not served again (its
    records are read back; the reference check runs)."""
    from sglang_mixkv.adakv import AdaKVConfig

    unknown = [m for m in methods or [] if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
    bad_regimes = [r for r in regimes if r not in REGIMES]
    if bad_regimes:
        raise ValueError(f"unknown regime {bad_regimes[0]!r} (known: {', '.join(REGIMES)})")
    todo = []
    for variant in variants.parse_list(",".join(specs)):  # every input checked before serving
        plan = variant.resolve(get_size("recall").num_layers)
        if variant.adakv_budget is not None:
            AdaKVConfig(variant.adakv_budget, window=window).check(plan, None)
        folders = [r / variant.plan for r in roots if (r / variant.plan).exists()]
        if not folders:
            trained_task(roots[0] / variant.plan)  # raises: no trained model folder
        for folder in folders:
            cfg, task = trained_task(folder)
            served = plans.from_config(cfg)
            if served.pretty() != variant.resolve(len(served)).pretty():
                raise ValueError(f"{folder} holds plan {served.pretty()}, not {variant.plan}")
            lays = layouts or (["zoology", "scattered"] if task.layout == "mixed" else [task.layout])
            ps = [p for c in (contexts or [task.context]) for lay in lays for reg in regimes
                  for p in probes(recall.RecallTask(**{**task.to_dict(), "context": c,
                                                       "layout": lay, "regime": reg}), sequences)]
            todo.append((variant, folder, cfg, task, ps))
    all_records, disagreements = [], []
    for variant, folder, cfg, task, ps in todo:
        for setting in settings_of(variant, methods, window=window):
            vdir = out / folder.parent.name / setting.label.replace(" ", "_")
            vdir.mkdir(parents=True, exist_ok=True)
            log(f"{setting.label} ({folder}): {len(ps)} requests of {task.queries} queries")
            done = vdir / "records.jsonl"
            if resume and done.exists():
                records = [json.loads(ln) for ln in done.read_text().splitlines()]
                log("  records read back from an earlier run")
            else:
                with launched_on_free_port(lambda port: serve_command(folder, setting, port),
                                           vdir / "server.log", timeout=600) as url:
                    records = asyncio.run(ask(url, ps, concurrency))
            sliding = cfg.get("sliding_window") or task.context
            for r in records:
                r.update(models=folder.parent.name, setting=setting.label,
                         variant=setting.variant, plan=variant.plan, method=setting.method,
                         budget=setting.budget, scoring=setting.scoring, alpha=setting.alpha,
                         rule=setting.rule, far=r["distance"] > sliding,
                         adakv_window=setting.window if setting.budget is not None else None,
                         kept_share=(1.0 if setting.budget is None
                                     else min(1.0, setting.budget / r["prompt_tokens"])))
            with open(vdir / "records.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
            failed = sum(r["error"] is not None for r in records)
            if failed:
                log(f"  {failed} requests failed (see {vdir / 'records.jsonl'})")
            if check_n:
                bad = check(folder, setting, ps, records, check_n)
                log(f"  reference check: {len(bad)} of {min(check_n, len(ps))} sequences differ")
                disagreements += bad
            all_records += records
    return all_records, disagreements


# ---- the report ------------------------------------------------------------------------
DISTANCE_BINS = (1, 2, 4, 8, 16)  # in windows


#: the columns a setting's accuracy is grouped by (records of earlier runs lack the last
#: ones: :func:`frame` fills them with what those runs measured)
KEYS = ["setting", "models", "variant", "plan", "method", "budget", "scoring", "alpha",
        "context", "layout", "regime"]


def frame(records: list[dict]) -> "pd.DataFrame":  # noqa: F821
    """The records as a frame; records of runs before layouts, regimes and methods were
    named get the zoology layout, the agnostic regime and their method from the setting."""
    import pandas as pd

    df = pd.DataFrame(records)
    for col, default in (("layout", "zoology"), ("regime", "agnostic")):
        df[col] = df[col].fillna(default) if col in df else default
    if "method" not in df:
        df["method"] = [("full" if b is None or b != b else str(s).split(" ", 1)[-1])
                        for s, b in zip(df["setting"], df["budget"])]
    if "kept_share" not in df:
        df["kept_share"] = 1.0
    return df


def summarize(records: list[dict], window: int) -> tuple["pd.DataFrame", "pd.DataFrame"]:  # noqa: F821
    """Accuracy per setting, context, layout and regime (all, far, near; failed requests
    count as wrong), and per setting, layout, regime and distance (in windows)."""
    import pandas as pd

    df = frame(records)
    by = df.groupby(KEYS, dropna=False, sort=False)
    summary = by.agg(queries=("correct", "size"), acc=("correct", "mean"),
                     failed=("error", lambda e: int(e.notna().sum())),
                     kept_share=("kept_share", "mean")).reset_index()
    for name, part in (("acc_far", df[df["far"]]), ("acc_near", df[~df["far"]])):
        acc = part.groupby(KEYS, dropna=False, sort=False)["correct"].agg(["mean", "size"])
        summary = summary.merge(acc.rename(columns={"mean": name, "size": name.replace("acc", "n")})
                                .reset_index(), on=KEYS, how="left")
    edges = [0, *[b * window for b in DISTANCE_BINS], float("inf")]
    labels = [f"<= {b}W" for b in DISTANCE_BINS] + [f"> {DISTANCE_BINS[-1]}W"]
    df["distance_bin"] = pd.cut(df["distance"], edges, labels=labels)
    by_distance = (df.groupby(["setting", "layout", "regime", "distance_bin"], observed=True,
                              sort=False)["correct"].mean().unstack("distance_bin"))
    by_distance = by_distance[[c for c in labels if c in by_distance.columns]].reset_index()
    by_distance.columns.name = None
    return summary, by_distance


def spread(summary: "pd.DataFrame") -> "pd.DataFrame":  # noqa: F821
    """Per setting, context, layout and regime, over the model folders (training seeds):
    mean, standard deviation, min and max of the far accuracy, and how many folders."""
    keys = ["setting", "variant", "plan", "method", "budget", "context", "layout", "regime"]
    by = summary.groupby(keys, sort=False, dropna=False)
    return by.agg(seeds=("acc_far", "size"), kept_share=("kept_share", "mean"),
                  acc_far_mean=("acc_far", "mean"), acc_far_std=("acc_far", "std"),
                  acc_far_min=("acc_far", "min"), acc_far_max=("acc_far", "max")).reset_index()


def curves(seeds: "pd.DataFrame") -> "pd.DataFrame":  # noqa: F821
    """The budget curves: per plan, context, layout, regime and method, far accuracy
    against the kept share of the prompt, with the plan's full prompt (its setting
    without a budget) as every method's point at share 1."""
    import pandas as pd

    full = seeds[seeds["method"] == "full"]
    rows = []
    for _, f in full.iterrows():
        same = seeds[(seeds["plan"] == f["plan"]) & (seeds["context"] == f["context"])
                     & (seeds["layout"] == f["layout"]) & (seeds["regime"] == f["regime"])
                     & (seeds["method"] != "full")]
        for method in same["method"].unique():
            rows.append({**f.to_dict(), "method": method, "budget": None})
    out = pd.concat([seeds[seeds["method"] != "full"], pd.DataFrame(rows, columns=seeds.columns)],
                    ignore_index=True)
    keys = ["plan", "context", "layout", "regime", "method"]
    return out.sort_values([*keys, "kept_share"]).reset_index(drop=True)[
        [*keys, "budget", "kept_share", "seeds", "acc_far_mean", "acc_far_std"]]


def smallest_budgets(curve: "pd.DataFrame", within: float = 0.02) -> "pd.DataFrame":  # noqa: F821
    """Per plan, context, layout, regime and method: the smallest budget whose far
    accuracy is within ``within`` of the full prompt's (None: no budget measured is)."""
    import pandas as pd

    rows = []
    for key, g in curve.groupby(["plan", "context", "layout", "regime", "method"], sort=False):
        full = g[g["budget"].isna()]["acc_far_mean"].iloc[0] if g["budget"].isna().any() else None
        ok = g[g["budget"].notna()]
        if full is not None:
            ok = ok[ok["acc_far_mean"] >= full - within]
        best = ok.sort_values("budget").iloc[0] if full is not None and len(ok) else None
        rows.append({**dict(zip(["plan", "context", "layout", "regime", "method"], key)),
                     "full_acc_far": full,
                     "smallest_budget": None if best is None else int(best["budget"]),
                     "kept_share": None if best is None else best["kept_share"],
                     "acc_far": None if best is None else best["acc_far_mean"]})
    return pd.DataFrame(rows)


def paper_scale(specs: list[str], context: int) -> "pd.DataFrame":  # noqa: F821
    """Per variant at paper scale: KV bytes of one 31K + 1K request, requests an 80 GiB
    GPU holds, and the roofline's output tok/s on an H100 at c=300 (achievable
    fractions). An Ada-KV budget B of a ``context``-token context becomes the same share
    of the paper's prompt."""
    import pandas as pd

    from mixkv_bench import roofline as rl
    from mixkv_bench.capacity import capacity_rows

    size = get_size("paper")
    scaled = {}
    for spec in specs:
        v = variants.parse(spec)
        plan = v.plan
        if plan not in plans.PRESET_NAMES and len(set(plan)) == 1:  # e.g. all local: same at any depth
            plan = plan[0] * size.num_layers
        scaled[spec] = (plan if v.adakv_budget is None else
                        f"{plan}@adakv={round(v.adakv_budget * PAPER_PROMPT / context)}")
    caps = {r["plan"]: r for r in capacity_rows(list(scaled.values()), size, 80 << 30, 0.85)}
    hw = rl.gpu("H100").achieving(*rl.ACHIEVABLE)
    wl = rl.Workload(300, PAPER_PROMPT, 1000, (300,))
    tput = rl.sweep(size, list(scaled.values()), hw, wl).set_index("plan")["output_tok_per_s"]
    return pd.DataFrame([{"variant": spec, "paper_variant": p,
                          "kv_bytes_per_request": caps[p]["request_bytes"],
                          "requests_80gib": caps[p]["max_concurrent_31k"],
                          "h100_out_tok_s_c300": tput[p]} for spec, p in scaled.items()])


def pareto(df: "pd.DataFrame", x: str, y: str) -> list[bool]:  # noqa: F821
    """Rows no other row beats: at most the memory ``x`` and at least the accuracy ``y``,
    one of them strictly."""
    pts = list(zip(df[x], df[y]))
    return [not any((a <= px and b >= py) and (a < px or b > py) for a, b in pts)
            for px, py in pts]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mixkv_bench.quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True,
                    help="folder of trained model folders, one per plan (MODELS/PLAN); "
                    "comma-separated folders (one per training seed) are evaluated alike "
                    "and reported with their spread")
    ap.add_argument("--plans", help="variants: PLAN or PLAN@adakv=B, comma-separated (default: "
                    "every trained folder in the first --models)")
    ap.add_argument("--budgets", help="a budget curve: PLAN@adakv=B for each of these budgets "
                    "and each plan of --plans with a global producer (the plans themselves "
                    "are the full prompt's point)")
    ap.add_argument("--methods", help="how budgets are served, comma-separated, of: "
                    f"{', '.join(METHODS)} (default: all; adakv-readers only on plans where "
                    "a layer reads another's global KV)")
    ap.add_argument("--adakv-window", type=POSITIVE, default=ADAKV_WINDOW,
                    help=f"Ada-KV's observation window for every budget ({ADAKV_WINDOW}, "
                    "serve's default); budgets must lie above it")
    ap.add_argument("--contexts", help="context lengths (default: the trained one)")
    ap.add_argument("--layouts", help="zoology, scattered or both (default: the trained one; "
                    "both for a model trained on the mixed layout)")
    ap.add_argument("--regimes", default="agnostic,aware", help="agnostic (the keys asked only "
                    "after the prompt), aware (also in the prompt, before compression), or both "
                    "(default)")
    ap.add_argument("--sequences", type=POSITIVE, default=64,
                    help="held-out sequences per context, layout and regime")
    ap.add_argument("--check", type=NON_NEGATIVE, default=16, help="requests per setting replayed "
                    "through the reference (0: none)")
    ap.add_argument("--concurrency", type=POSITIVE, default=8)
    ap.add_argument("--out", type=Path, help="report folder (default: results/quality-<time>)")
    ap.add_argument("--resume", action="store_true", help="keep the records of settings "
                    "already in --out (a run stopped part way goes on where it stopped)")
    a = ap.parse_args(argv)
    if a.out is None:
        a.out = Path("results") / time.strftime("quality-%Y%m%d-%H%M%S")
    roots = [Path(m) for m in a.models.split(",") if m.strip()]
    if a.plans is None:
        trained = [d.name for d in sorted(roots[0].glob("*")) if (d / "config.json").exists()
                   and (json.loads((d / "config.json").read_text()).get("mixkv_weights") or {})
                   .get("trained")]
        if not trained:
            print(f"error: no trained model folders in {roots[0]}", file=sys.stderr)
            return 2
        a.plans = ",".join(trained)
    from harness.sysinfo import collect

    def listed(text: str | None) -> list[str] | None:
        return [t.strip() for t in text.split(",") if t.strip()] if text else None

    try:
        specs = [v.label for v in variants.parse_list(a.plans)]
        if a.budgets:
            budgets = [int(b) for b in listed(a.budgets)]
            size = get_size("recall").num_layers
            specs += [f"{v.plan}@adakv={b}" for v in variants.parse_list(a.plans)
                      if v.adakv_budget is None and v.resolve(size).global_producers
                      for b in budgets]
        contexts = [int(c) for c in a.contexts.split(",")] if a.contexts else None
        a.out.mkdir(parents=True, exist_ok=True)
        records, bad = evaluate(roots, specs, contexts, a.sequences, a.out, a.check,
                                a.concurrency, resume=a.resume, layouts=listed(a.layouts),
                                regimes=listed(a.regimes) or [], methods=listed(a.methods),
                                window=a.adakv_window)
    except plans.PlanError as e:
        print(f"error: invalid plan: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # VariantError, AdaKVError, a task the context cannot hold, a folder
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg, task = trained_task(next(r / variants.parse(specs[0]).plan for r in roots
                                  if (r / variants.parse(specs[0]).plan).exists()))
    meta = collect(["python", "-m", "mixkv_bench.quality", *(argv if argv is not None else sys.argv[1:])])
    report(a.out, records, bad, specs, cfg["sliding_window"], task, meta, a.adakv_window)
    if bad:
        print(f"error: {len(bad)} answers differ from the reference (report.md)", file=sys.stderr)
        return 1
    return 0


def report(out: Path, records: list[dict], bad: list[dict], specs: list[str], window: int,
           task: recall.RecallTask, meta: dict, adakv_window: int = ADAKV_WINDOW) -> None:
    """``summary.csv``, ``spread.csv``, ``by_distance.csv``, ``curves.csv``,
    ``smallest_budgets.csv``, ``paper_scale.csv``, ``accuracy.png``, ``budget_curve.png``
    and ``report.md`` (provenance first) under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, by_distance = summarize(records, window)
    seeds = spread(summary)
    scale = paper_scale(specs, task.context)
    summary.to_csv(out / "summary.csv", index=False)
    seeds.to_csv(out / "spread.csv", index=False)
    by_distance.to_csv(out / "by_distance.csv", index=False)
    curve = curves(seeds)
    smallest = smallest_budgets(curve)
    curve.to_csv(out / "curves.csv", index=False)
    smallest.to_csv(out / "smallest_budgets.csv", index=False)
    trained = (seeds[seeds["context"] == task.context].rename(columns={"acc_far_mean": "acc_far"})
               .merge(scale, on="variant"))
    groups = ["layout", "regime"]
    trained["pareto"] = False
    for _, idx in trained.groupby(groups, sort=False).groups.items():
        trained.loc[idx, "pareto"] = pareto(trained.loc[idx], "kv_bytes_per_request", "acc_far")
    trained.to_csv(out / "paper_scale.csv", index=False)
    (out / "meta.json").write_text(json.dumps({**meta, "task": task.to_dict(),
                                               "disagreements": bad}, indent=1) + "\n")
    first = trained.iloc[0][groups].tolist() if len(trained) else [task.layout, "agnostic"]
    shown = trained[(trained["layout"] == first[0]) & (trained["regime"] == first[1])]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, r in shown.iterrows():
        ax.scatter(r["kv_bytes_per_request"] / 2**30, r["acc_far"],
                   marker="o" if r["pareto"] else "x")
        ax.annotate(r["setting"], (r["kv_bytes_per_request"] / 2**30, r["acc_far"]), fontsize=7)
    front = shown[shown["pareto"]].sort_values("kv_bytes_per_request")
    ax.plot(front["kv_bytes_per_request"] / 2**30, front["acc_far"], "--", lw=1)
    ax.set_xlabel("KV per 31K + 1K request at paper scale (GiB)")
    ax.set_ylabel(f"recall accuracy, pairs > {window} tokens back")
    ax.set_title(f"Recall vs KV memory (context {task.context}, {first[0]} layout, "
                 f"{first[1]} regime; o: Pareto front)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
    curve_lines = []
    if len(curve):
        rows = curve[["plan", "context"]].drop_duplicates().values.tolist()
        cols = curve[["layout", "regime"]].drop_duplicates().values.tolist()
        colour = {m: f"C{i}" for i, m in enumerate(METHODS)}  # one colour per method
        fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.6 * len(cols), 3.2 * len(rows)),
                                 squeeze=False, sharex=True, sharey=True)
        for (plan, context), row in zip(rows, axes):
            for (layout, regime), ax in zip(cols, row):
                part = curve[(curve["plan"] == plan) & (curve["context"] == context)
                             & (curve["layout"] == layout) & (curve["regime"] == regime)]
                for method, g in part.groupby("method", sort=False):
                    ax.errorbar(g["kept_share"], g["acc_far_mean"],
                                yerr=g["acc_far_std"].fillna(0), marker="o", ms=3, capsize=2,
                                color=colour.get(method), label=method)
                ax.set_title(f"{plan}, context {context}: {layout}, {regime}", fontsize=8)
                ax.grid(alpha=0.3)
        for ax in axes[-1]:
            ax.set_xlabel("kept share of the prompt")
        for row in axes:
            row[0].set_ylabel(f"far recall (> {window} tokens back)", fontsize=8)
        handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
                   fontsize=8)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        fig.savefig(out / "budget_curve.png", dpi=120)
        plt.close(fig)
        table = curve.assign(budget=[("full" if b != b or b is None else f"B={int(b)}")
                                     for b in curve["budget"]])
        table = table.pivot_table(index=["plan", "layout", "regime", "method"], columns="budget",
                                  values="acc_far_mean", sort=False)
        order = sorted((c for c in table.columns if c != "full"), key=lambda c: int(c[2:]))
        table = table[order + ["full"]]
        table.columns.name = None
        prompt_lens = {r: int(n) for r, n in frame(records).groupby("regime", sort=False)
                       ["prompt_tokens"].max().items()} if "prompt_tokens" in frame(records) else {}
        curve_lines = [
            "## Budget curves: far accuracy against the kept share of the prompt", "",
            "Every method keeps, per KV head of each global producer, the same number of "
            f"prompt tokens: the budget B (the observation window of {adakv_window} "
            "included; Ada-KV's heads share B adaptively, the others keep B each). "
            "`adakv`: Ada-SnapKV, the producer's queries scoring; `adakv-readers`: every "
            "layer that reads the producer scores; `snapkv`: `--adakv-alpha 1`; `recent`: "
            "the first 4 tokens and the most recent (StreamingLLM); `random`: a seeded "
            "random choice. Share 1: the full prompt (no budget). Regime `agnostic`: the "
            "keys are asked only after compression; `aware`: the prompt ends with the keys "
            "that will be asked, so they are in the observation window when it is scored.",
            "", "Far accuracy per budget B (columns; `full`: no budget); the kept share of "
            "each is B over the prompt's tokens (per regime: "
            + ", ".join(f"{r} {n}" for r, n in prompt_lens.items()) + "). Every point with "
            "its share, seeds and spread: `curves.csv`.",
            "", table.reset_index().to_markdown(index=False, floatfmt=".3f"), "",
            "![budget curves](budget_curve.png)", "",
            "### The smallest budget within 2 points of the full prompt", "",
            smallest.to_markdown(index=False, floatfmt=".3f"), "",
        ]
    cols = ["setting", "models", "context", "layout", "regime", "queries", "acc", "acc_far",
            "acc_near", "failed"]
    lines = [
        "# Recall through the endpoint: what each plan and budget costs", "",
        *provenance_lines(meta),
        f"- task: {json.dumps(task.to_dict())}; held-out seed {SEED} + context (+ 1,000 "
        "scattered, + 2,000 aware); one `POST /generate` per sequence, the prompt (context, "
        "and the keys to be asked in the aware regime) as prompt, the query keys forced in "
        f"decode and the answers greedy; chance 1/{task.values}", "",
        "## Accuracy per setting, model folder, context, layout and regime", "",
        "Far: the queried pair lies more than one window "
        f"({window} tokens) back; failed requests count as wrong. `models`: the folder of "
        "trained models (one per training seed). Layout `zoology`: the pairs open the "
        "context; `scattered`: they sit at random places in it.", "",
        summary[cols].to_markdown(index=False, floatfmt=".3f"), "",
        "## Spread over the model folders (training seeds)", "",
        seeds.to_markdown(index=False, floatfmt=".3f"), "",
        *curve_lines,
        "## Accuracy by distance from the pair to the query (windows; all folders)", "",
        by_distance.to_markdown(index=False, floatfmt=".3f"), "",
        "## Against memory and throughput at paper scale", "",
        "KV bytes of one 31K + 1K request of the `paper` model and requests an 80 GiB GPU "
        "holds (the capacity formula), output tok/s of the paper's test at c=300 on an H100 "
        "at 60% / 90% of peak (the roofline); an Ada-KV budget is scaled to the same share "
        "of the 31K prompt. Far accuracy: the mean over the model folders. Pareto: no other "
        "setting of the same layout and regime has at most its memory and at least its far "
        "accuracy.", "",
        trained[["setting", "layout", "regime", "paper_variant", "acc_far", "seeds",
                 "kv_bytes_per_request", "requests_80gib", "h100_out_tok_s_c300",
                 "pareto"]].to_markdown(index=False, floatfmt=".3f", intfmt=","), "",
        f"![accuracy vs memory](accuracy.png) ({first[0]} layout, {first[1]} regime)", "",
        "## Endpoint against the reference", "",
        (f"{len(bad)} sampled answers differ from the plain-PyTorch reference." if bad else
         "Every sampled answer equals the plain-PyTorch reference's."), "",
    ]
    (out / "report.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
