"""One-off probe: torch's own nn.TransformerEncoder (not our model) on the recall task.

    python vanilla.py PAIRS QUERIES CONTEXT LAYERS abs|none [LR]
"""
import sys, time
from pathlib import Path
import torch, torch.nn as nn
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
from mixkv_bench import recall, train
torch.manual_seed(0)
pairs, queries, context, layers, pe = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
task = recall.RecallTask(context=context, pairs=pairs, queries=queries)
T = task.length
class M(nn.Module):
    def __init__(s):
        super().__init__()
        s.emb = nn.Embedding(256, 64); s.pos = nn.Embedding(T, 64)
        s.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True, norm_first=True), layers)
        s.head = nn.Linear(64, 256)
    def forward(s, ids):
        x = s.emb(ids) + (s.pos(torch.arange(ids.shape[1])) if pe == "abs" else 0)
        m = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return s.head(s.enc(x, mask=m, is_causal=True))
m = M(); opt = torch.optim.AdamW(m.parameters(), lr=float(sys.argv[6]) if len(sys.argv) > 6 else 1e-3)
g = torch.Generator().manual_seed(0); test = recall.heldout(task, 256, 10000)
t0 = time.time()
for step in range(1, 20001):
    b = recall.sample(task, 32, g)
    loss = train.answer_loss(m(b.ids), b)
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 250 == 0:
        with torch.no_grad():
            lg = m(test.ids); rows = torch.arange(256).unsqueeze(1)
            acc = (lg[rows, test.answer_pos - 1].argmax(-1) == test.ids[rows, test.answer_pos]).float().mean().item()
        print(step, round(loss.item(), 3), round(acc, 3), round(time.time() - t0), flush=True)
    if time.time() - t0 > 300: break
