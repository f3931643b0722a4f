"""The diagnosis table of results/quality-search/diagnosis, computed from the logs beside it."""
import re, sys
from pathlib import Path
import pandas as pd

D = Path(sys.argv[1])
H = lambda n: sum(1 / k for k in range(1, n + 1))
ELIM8 = H(8) / 8
PROBES = [  # log, model, what changed (from the frozen recipe: lr 4e-3, warm-up 200, N(0, 0.02); task e8: 8 pairs, 8 queries, context 64)
    ("l2", "ours, 2 layers", "the frozen recipe", "num_layers=2"),
    ("l2long", "ours, 2 layers", "a 40,000-step schedule", "num_layers=2 r_steps=40000"),
    ("l2q2", "ours, 2 layers", "2 queries of the 8 pairs (elimination: 0.134)", "num_layers=2 queries=2"),
    ("l2r", "ours, 2 layers", "queries drawn with replacement (no elimination)", "num_layers=2 repl=1"),
    ("l2m", "ours, 2 layers", "4 KV heads (MHA), lr 1e-3", "num_layers=2 kv_heads=4 r_lr=0.001"),
    ("l2h1", "ours, 2 layers", "one 64-dim head, RoPE theta 1e6", "num_layers=2 heads=1 kv_heads=1 rope_theta=1000000"),
    ("l2b256", "ours, 2 layers", "batch 256, lr 1e-3", "num_layers=2 r_batch=256 r_lr=0.001 r_steps=6000"),
    ("l2e8b", "ours, 2 layers", "lr 1e-3, no warm-up", "num_layers=2 r_lr=0.001 r_warmup=0"),
    ("l2p2", "ours, 2 layers", "2 pairs, 1 query, context 16 (chance among them: 0.5)", "num_layers=2 pairs=2 queries=1 context=16"),
    ("l2p2b", "ours, 2 layers", "the same, lr 1e-3, no warm-up", "num_layers=2 pairs=2 queries=1 context=16 r_lr=0.001 r_warmup=0"),
    ("van_p2", "torch TransformerEncoder, 2 layers, learned positions", "2 pairs, 1 query, context 16; lr 1e-3, torch's init", "vanilla.py 2 1 16 2 abs"),
    ("van_e8", "torch TransformerEncoder, 2 layers, learned positions", "lr 1e-3, torch's init", "vanilla.py 8 8 64 2 abs"),
    ("van_e8n", "torch TransformerEncoder, 2 layers, no positions", "lr 1e-3, torch's init", "vanilla.py 8 8 64 2 none"),
    ("l2e8ti", "ours, 2 layers", "lr 1e-3, no warm-up, the modules' own init", "num_layers=2 r_lr=0.001 r_warmup=0 torchinit=1"),
    ("l2z16ti", "ours, 2 layers", "the same on 16 pairs, context 128", "num_layers=2 pairs=16 context=128 r_lr=0.001 r_warmup=0 torchinit=1"),
    ("l2e8z", "ours, 2 layers", "the same with o_proj and down_proj zeroed", "num_layers=2 r_lr=0.001 r_warmup=0 torchinit=1 zeroout=1"),
    ("t6e8", "ours, 12 layers", "RoPE theta 1e6", "rope_theta=1e6 (first probe script)"),
    ("t6z16", "ours, 12 layers", "RoPE theta 1e6, 16 pairs, context 128", "rope_theta=1e6 pairs=16 context=128 (first probe script)"),
    ("l12e8b", "ours, 12 layers", "lr 1e-3, no warm-up", "r_lr=0.001 r_warmup=0"),
    ("l12e8ti", "ours, 12 layers", "lr 1e-3, no warm-up, the modules' own init", "r_lr=0.001 r_warmup=0 torchinit=1"),
    ("standard-new", "ours, 12 layers", "the same with the committed trainer (1243ec9)", "python -m mixkv_bench.train --plan standard (defaults)"),
    ("l12e8ti3", "ours, 12 layers", "lr 3e-3, warm-up 200, the modules' own init", "r_lr=0.003 r_warmup=200 torchinit=1"),
    ("l12e8z", "ours, 12 layers", "lr 1e-3, no warm-up, own init, o_proj and down_proj zeroed", "r_lr=0.001 r_warmup=0 torchinit=1 zeroout=1"),
    # fourth session: the trainer itself at 3c23bdf (its defaults: lr 1e-3, no warm-up, own init)
    ("l12new", "ours, 12 layers", "the trainer's defaults at 3c23bdf (a control, run beside l12rep)", "python -m mixkv_bench.train --plan standard"),
    ("l12rep", "ours, 12 layers", "the same, half the batches repeated random spans", "python -m mixkv_bench.train --plan standard --repeat-mix 0.5"),
    ("l12r16", "ours, 12 layers", "the same on 16 pairs all queried (elimination: 0.211); results/quality's standard replays it to step 6,000", "(as l12rep) --task-pairs 16 --task-queries 16"),
    ("l12mix16", "ours, 12 layers", "the same with half the batches at 8 pairs (a curriculum), beside l12r16; stopped", "(as l12r16) --pair-mix 8,16"),
]
rows = []
for name, model, what, flags in PROBES:
    text = (D / f"{name}.log").read_text()
    pts = [(int(s), float(a), float(m)) for s, a, m in re.findall(r"step (\d+): loss \S+ acc \S+ far (\S+) \((\S+) min\)", text)]
    if not pts:  # vanilla.py: "step loss acc seconds"
        pts = [(int(s), float(a), float(t) / 60) for s, _, a, t in re.findall(r"^(\d+) (\S+) (\S+) (\d+)$", text, re.M)]
    df = pd.DataFrame(pts, columns=["step", "acc", "min"])
    best = df.loc[df.acc.idxmax()]
    over = df[df.acc > 0.9]
    rows.append({"probe": name, "model": model, "changed": what, "steps": int(df.step.iloc[-1]),
                 "minutes": round(df["min"].iloc[-1], 1), "best far acc": round(best.acc, 3),
                 "last far acc": round(df.acc.iloc[-1], 3),
                 "first step > 0.9": int(over.step.iloc[0]) if len(over) else "not reached", "args": flags})
t = pd.DataFrame(rows)
print(f"Elimination level for 8 pairs, 8 queries: H(8)/8 = {ELIM8:.3f}\n")
print(t.to_markdown(index=False))
