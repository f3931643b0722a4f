"""One-off probe: the trainer with the recall size overridden (key=value args)."""
import sys, dataclasses
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
from mixkv_bench import train, recall
from sglang_mixkv import model_folder
name = sys.argv[1]
kw = dict(a.split("=") for a in sys.argv[2:])
kw_repl = kw.pop("repl", "")
ZEROOUT = kw.pop("zeroout", "")
if kw.pop("torchinit", ""):
    _orig = train.Trainable.__init__
    def _init(self, *a, **k):
        _orig(self, *a, **k)
        for mod in self.modules():
            if isinstance(mod, (train.nn.Linear, train.nn.Embedding)):
                mod.reset_parameters()
        if ZEROOUT:
            for n, p in self.named_parameters():
                if n.endswith(("o_proj.weight", "down_proj.weight")):
                    train.nn.init.zeros_(p)
    train.Trainable.__init__ = _init
minutes = float(kw.pop("minutes", 14))
pairs = int(kw.pop("pairs", 8)); context = int(kw.pop("context", 64)); queries = int(kw.pop("queries", pairs)); layout = kw.pop("layout", "zoology")
rkw = {k[2:]: type(getattr(train.Recipe, k[2:]))(v) for k, v in list(kw.items()) if k.startswith("r_")}
for k in [k for k in kw if k.startswith("r_")]: kw.pop(k)
base = model_folder.get_size("recall")
size = dataclasses.replace(base, **{k: type(getattr(base, k))(v) for k, v in kw.items()})
train.get_size = lambda n: size
if kw_repl:
    import torch
    orig = torch.randperm
    def sample(task, batch, generator, _o=recall.sample):
        real = torch.randperm
        calls = []
        def rp(n, generator=None, **k):
            calls.append(n)
            if len(calls) % 2 == 0:  # the second randperm per sequence picks the asked pairs
                return torch.randint(n, (n,), generator=generator)
            return real(n, generator=generator, **k)
        torch.randperm = rp
        try:
            return _o(task, batch, generator)
        finally:
            torch.randperm = real
    recall.sample = sample
print(size, rkw, flush=True)
task = recall.RecallTask(context=context, pairs=pairs, queries=queries, layout=layout)
train.train("standard", Path("/tmp/probe") / name, task, train.Recipe(**rkw), minutes=minutes, eval_every=100,
            log=lambda s: print(s, flush=True))
