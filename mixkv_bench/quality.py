"""``python -m mixkv_bench.quality`` (``make quality``): what a layer plan, a window or an
Ada-KV budget costs in recall, measured through the real endpoint, beside what it saves
in memory and wins in throughput at paper scale.

    python -m mixkv_bench.quality --models results/quality/models/seed0 \\
        --plans standard,swa,ma,ma-offset,standard@adakv=40 [--contexts 64,128] \\
        [--sequences 64] [--check 16] [--out results/quality-x]

For every variant (``PLAN`` or ``PLAN@adakv=B``, as in ``make bench``) our server serves
the trained folder ``MODELS/PLAN`` (:mod:`mixkv_bench.train`) as a user runs it (``serve
--model-path``; plus the flags of :data:`mixkv_bench.forced.SERVER_FLAGS`, which change
no computation); an Ada-KV variant is served three ways: Ada-KV with the producer's
queries scoring (``adakv``), with every reader's (``adakv-readers``), and the uniform
per-head budget (``snapkv``: ``--adakv-alpha 1``). Each held-out sequence (seed
:data:`SEED` + context length, never a training seed) is one ``POST /generate``: the
prompt is its context, and in decode the query keys are forced while the model answers
each greedily (:mod:`mixkv_bench.forced`), so every answer is read from the KV the server
kept after the prompt, its own earlier answers in context. One record per query goes to
``OUT/SETTING/records.jsonl``.

``--check N``: N of each setting's sequences are replayed through the plain-PyTorch
reference of the same folder (keys forced the same way, the same Ada-KV selection for
budget variants); any disagreement is reported, and the exit status is 1: the endpoint
and the reference are one model, not two.

The report (``OUT/report.md``, ``summary.csv``, ``accuracy.png``) gives accuracy per
variant and context, on all queries and on those whose pair lies more than one window
back ("far", which a sliding window alone cannot answer), accuracy by distance, and per
variant the KV bytes of one 31K + 1K request and the projected output tokens/s on an
H100 at paper scale (:mod:`mixkv_bench.capacity`, :mod:`mixkv_bench.roofline`), with the
accuracy-memory Pareto front marked. An Ada-KV budget of B tokens on a C-token context is
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

from harness.server import launched_on_free_port
from harness.sysinfo import provenance_lines
from mixkv_bench import forced, recall, variants
from sglang_mixkv import plan as plans
from sglang_mixkv.defaults import API_KEY_ENV, auth_headers
from sglang_mixkv.model_folder import get_size

SEED = 20_000  # + context length: held-out sets, far from the trainer's seeds
PAPER_PROMPT = 31_000


@dataclass(frozen=True)
class Setting:
    """One served configuration of a variant."""

    label: str
    variant: str
    plan: str
    budget: int | None = None
    scoring: str = "producer"
    alpha: float = 0.2

    def serve_args(self) -> list[str]:
        if self.budget is None:
            return []
        return ["--adakv-budget", str(self.budget), "--adakv-scoring", self.scoring,
                "--adakv-alpha", str(self.alpha)]

    def reference_budget(self):
        from mixkv_bench.reference import AdaBudget

        return None if self.budget is None else AdaBudget(self.budget, alpha=self.alpha,
                                                          scoring=self.scoring)


def settings_of(variant: variants.Variant) -> list[Setting]:
    """A plan: one setting. A budget: Ada-KV (both scoring rules) and SnapKV (alpha 1)."""
    if variant.adakv_budget is None:
        return [Setting(variant.label, variant.label, variant.plan)]
    b, v = variant.adakv_budget, variant.label
    return [Setting(f"{v} adakv", v, variant.plan, b),
            Setting(f"{v} adakv-readers", v, variant.plan, b, scoring="readers"),
            Setting(f"{v} snapkv", v, variant.plan, b, alpha=1.0)]


@dataclass(frozen=True)
class Probe:
    """One request: a held-out sequence's context as the prompt, its queries asked in
    decode (:mod:`mixkv_bench.forced`)."""

    context: int
    sequence: int
    prompt: list[int]
    keys: list[int]
    answers: list[int]
    distances: list[int]


def probes(task: recall.RecallTask, sequences: int) -> list[Probe]:
    """``sequences`` held-out sequences of ``task`` (seed SEED + context)."""
    batch = recall.heldout(task, sequences, SEED + task.context)
    prompt_len = 1 + task.context
    out = []
    for s in range(sequences):
        ids, pos = batch.ids[s].tolist(), batch.answer_pos[s].tolist()
        out.append(Probe(task.context, s, ids[:prompt_len], [ids[p - 1] for p in pos],
                         [ids[p] for p in pos], batch.distance[s].tolist()))
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
        return [{"context": p.context, "sequence": p.sequence, "query": q,
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
            served.setdefault((r["context"], r["sequence"]), {})[r["query"]] = r["got"]
    sample = random.Random(seed).sample([p for p in ps if (p.context, p.sequence) in served],
                                        min(n, len(served)))
    bad = []
    for p in sample:
        server = [served[(p.context, p.sequence)][q] for q in range(len(p.keys))]
        want = reference_answers(ref, p, ada)
        if want != server:
            bad.append({"setting": setting.label, "context": p.context, "sequence": p.sequence,
                        "server": server, "reference": want})
    return bad


def serve_command(folder: Path, setting: Setting, port: int) -> list[str]:
    return [sys.executable, "-m", "sglang_mixkv.serve", "--model-path", str(folder),
            "--port", str(port), *setting.serve_args(), *forced.SERVER_FLAGS]


def evaluate(roots: list[Path], specs: list[str], contexts: list[int] | None, sequences: int,
             out: Path, check_n: int, concurrency: int = 8, log=print,
             resume: bool = False) -> tuple[list[dict], list[dict]]:
    """Serve and ask every setting of every variant in every root that has its folder
    (``ROOT/PLAN``; one root per training seed); returns all records (``models``: the
    root's name) and every disagreement. ``resume``: a setting whose records are already
    in ``out`` is not served again (its records are read back; the reference check runs)."""
    todo = []
    for variant in variants.parse_list(",".join(specs)):  # every input checked before serving
        variant.resolve(get_size("recall").num_layers)
        folders = [r / variant.plan for r in roots if (r / variant.plan).exists()]
        if not folders:
            trained_task(roots[0] / variant.plan)  # raises: no trained model folder
        for folder in folders:
            cfg, task = trained_task(folder)
            served = plans.from_config(cfg)
            if served.pretty() != variant.resolve(len(served)).pretty():
                raise ValueError(f"{folder} holds plan {served.pretty()}, not {variant.plan}")
            ps = [p for c in (contexts or [task.context])
                  for p in probes(recall.RecallTask(**{**task.to_dict(), "context": c}), sequences)]
            todo.append((variant, folder, cfg, task, ps))
    all_records, disagreements = [], []
    for variant, folder, cfg, task, ps in todo:
        for setting in settings_of(variant):
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
            window = cfg.get("sliding_window") or task.context
            for r in records:
                r.update(models=folder.parent.name, setting=setting.label,
                         variant=setting.variant, plan=variant.plan,
                         budget=setting.budget, scoring=setting.scoring, alpha=setting.alpha,
                         far=r["distance"] > window)
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


def summarize(records: list[dict], window: int) -> tuple["pd.DataFrame", "pd.DataFrame"]:  # noqa: F821
    """Accuracy per setting and context (all, far, near; failed requests count as wrong),
    and per setting and distance (in windows)."""
    import pandas as pd

    df = pd.DataFrame(records)
    keys = ["setting", "models", "variant", "plan", "budget", "scoring", "alpha", "context"]
    by = df.groupby(keys, dropna=False, sort=False)
    summary = by.agg(queries=("correct", "size"), acc=("correct", "mean"),
                     failed=("error", lambda e: int(e.notna().sum()))).reset_index()
    for name, part in (("acc_far", df[df["far"]]), ("acc_near", df[~df["far"]])):
        acc = part.groupby(keys, dropna=False, sort=False)["correct"].agg(["mean", "size"])
        summary = summary.merge(acc.rename(columns={"mean": name, "size": name.replace("acc", "n")})
                                .reset_index(), on=keys, how="left")
    edges = [0, *[b * window for b in DISTANCE_BINS], float("inf")]
    labels = [f"<= {b}W" for b in DISTANCE_BINS] + [f"> {DISTANCE_BINS[-1]}W"]
    df["distance_bin"] = pd.cut(df["distance"], edges, labels=labels)
    by_distance = (df.groupby(["setting", "distance_bin"], observed=True, sort=False)["correct"]
                   .mean().unstack("distance_bin"))
    by_distance = by_distance[[c for c in labels if c in by_distance.columns]].reset_index()
    by_distance.columns.name = None
    return summary, by_distance


def spread(summary: "pd.DataFrame") -> "pd.DataFrame":  # noqa: F821
    """Per setting and context, over the model folders (training seeds): mean, standard
    deviation, min and max of the far accuracy, and how many folders."""
    by = summary.groupby(["setting", "variant", "context"], sort=False)["acc_far"]
    return by.agg(seeds="size", acc_far_mean="mean", acc_far_std="std", acc_far_min="min",
                  acc_far_max="max").reset_index()


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
    ap.add_argument("--contexts", help="context lengths (default: the trained one)")
    ap.add_argument("--sequences", type=int, default=64, help="held-out sequences per context")
    ap.add_argument("--check", type=int, default=16, help="requests per setting replayed "
                    "through the reference (0: none)")
    ap.add_argument("--concurrency", type=int, default=8)
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

    try:
        specs = [v.label for v in variants.parse_list(a.plans)]
        contexts = [int(c) for c in a.contexts.split(",")] if a.contexts else None
        a.out.mkdir(parents=True, exist_ok=True)
        records, bad = evaluate(roots, specs, contexts, a.sequences, a.out, a.check,
                                a.concurrency, resume=a.resume)
    except plans.PlanError as e:
        print(f"error: invalid plan: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # VariantError, a task the context cannot hold, a folder
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg, task = trained_task(next(r / variants.parse(specs[0]).plan for r in roots
                                  if (r / variants.parse(specs[0]).plan).exists()))
    meta = collect(["python", "-m", "mixkv_bench.quality", *(argv if argv is not None else sys.argv[1:])])
    report(a.out, records, bad, specs, cfg["sliding_window"], task, meta)
    if bad:
        print(f"error: {len(bad)} answers differ from the reference (report.md)", file=sys.stderr)
        return 1
    return 0


def report(out: Path, records: list[dict], bad: list[dict], specs: list[str], window: int,
           task: recall.RecallTask, meta: dict) -> None:
    """``summary.csv``, ``by_distance.csv``, ``paper_scale.csv``, ``accuracy.png`` and
    ``report.md`` (provenance first) under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, by_distance = summarize(records, window)
    seeds = spread(summary)
    scale = paper_scale(specs, task.context)
    summary.to_csv(out / "summary.csv", index=False)
    seeds.to_csv(out / "spread.csv", index=False)
    by_distance.to_csv(out / "by_distance.csv", index=False)
    trained = (seeds[seeds["context"] == task.context].rename(columns={"acc_far_mean": "acc_far"})
               .merge(scale, on="variant"))
    trained["pareto"] = pareto(trained, "kv_bytes_per_request", "acc_far")
    trained.to_csv(out / "paper_scale.csv", index=False)
    (out / "meta.json").write_text(json.dumps({**meta, "task": task.to_dict(),
                                               "disagreements": bad}, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, r in trained.iterrows():
        ax.scatter(r["kv_bytes_per_request"] / 2**30, r["acc_far"],
                   marker="o" if r["pareto"] else "x")
        ax.annotate(r["setting"], (r["kv_bytes_per_request"] / 2**30, r["acc_far"]), fontsize=7)
    front = trained[trained["pareto"]].sort_values("kv_bytes_per_request")
    ax.plot(front["kv_bytes_per_request"] / 2**30, front["acc_far"], "--", lw=1)
    ax.set_xlabel("KV per 31K + 1K request at paper scale (GiB)")
    ax.set_ylabel(f"recall accuracy, pairs > {window} tokens back")
    ax.set_title(f"Recall vs KV memory (context {task.context}; o: Pareto front)")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    cols = ["setting", "models", "context", "queries", "acc", "acc_far", "acc_near", "failed"]
    lines = [
        "# Recall through the endpoint: what each plan and budget costs", "",
        *provenance_lines(meta),
        f"- task: {json.dumps(task.to_dict())}; held-out seed {SEED} + context; one "
        "`POST /generate` per sequence, the context as prompt, the query keys forced in decode "
        f"and the answers greedy; chance 1/{task.values}", "",
        "## Accuracy per setting, model folder and context", "",
        "Far: the queried pair lies more than one window "
        f"({window} tokens) back; failed requests count as wrong. `models`: the folder of "
        "trained models (one per training seed).", "",
        summary[cols].to_markdown(index=False, floatfmt=".3f"), "",
        "## Spread over the model folders (training seeds)", "",
        seeds.to_markdown(index=False, floatfmt=".3f"), "",
        "## Accuracy by distance from the pair to the query (windows; all folders)", "",
        by_distance.to_markdown(index=False, floatfmt=".3f"), "",
        "## Against memory and throughput at paper scale", "",
        "KV bytes of one 31K + 1K request of the `paper` model and requests an 80 GiB GPU "
        "holds (the capacity formula), output tok/s of the paper's test at c=300 on an H100 "
        "at 60% / 90% of peak (the roofline); an Ada-KV budget is scaled to the same share "
        "of the 31K prompt. Far accuracy: the mean over the model folders. Pareto: no other "
        "setting has at most its memory and at least its far accuracy.", "",
        trained[["setting", "paper_variant", "acc_far", "seeds", "kv_bytes_per_request",
                 "requests_80gib", "h100_out_tok_s_c300", "pareto"]].to_markdown(
            index=False, floatfmt=".3f", intfmt=","), "",
        "![accuracy vs memory](accuracy.png)", "",
        "## Endpoint against the reference", "",
        (f"{len(bad)} sampled answers differ from the plain-PyTorch reference." if bad else
         "Every sampled answer equals the plain-PyTorch reference's."), "",
    ]
    (out / "report.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
