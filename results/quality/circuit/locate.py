"""Where `standard`'s recall lives: its trained weights, run unchanged under plans that
make one layer local (window 8) or leave one layer global, scored on the trainer's
held-out set (far queries). No training: a plan that keeps the layers recall uses keeps
the accuracy. Writes locate.csv beside this file.

    OMP_NUM_THREADS=1 .venv/bin/python results/quality/circuit/locate.py
"""
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from mixkv_bench import recall, train  # noqa: E402
from sglang_mixkv.model_folder import get_size  # noqa: E402
from sglang_mixkv.plan import resolve  # noqa: E402

folder = ROOT / "results/quality/models/standard"
size = get_size("recall")
task = recall.RecallTask()  # the trained task (the trainer's defaults)
test = recall.heldout(task, train.HELDOUT_N, train.HELDOUT_SEED)
n = size.num_layers
specs = {"standard": "G" * n}
specs |= {f"layer {i} local": "G" * i + "L" + "G" * (n - i - 1) for i in range(n)}
specs |= {f"only layer {i} global": "L" * i + "G" + "L" * (n - i - 1) for i in range(n)}
rows = []
for label, spec in specs.items():
    model = train.Trainable(size, resolve(spec, n), size.window)
    train.start_from(model, folder)
    rows.append({"plan": label, "spec": spec, "acc_far": round(train.accuracy(model.eval(), test)["acc_far"], 3)})
    print(rows[-1], flush=True)
pd.DataFrame(rows).to_csv(Path(__file__).with_name("locate.csv"), index=False)
