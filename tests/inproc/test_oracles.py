"""The plain-PyTorch reference against code not written here: transformers' Llama and
Mistral on the same weights.

Every server test compares our SGLang model with ``mixkv_bench.reference``, and both
share the rotary embedding, the weight writer and the plan reader: a RoPE-layout or
window-edge mistake would pass all of them. transformers 5.12.1 (SGLang 0.5.17's pin)
implements the same conventions independently:

- the ``standard`` plan is a Llama: ``LlamaForCausalLM`` loads its Llama export
  (``model_folder.write_model_folder(..., architecture="LlamaForCausalLM")``, the same
  seeded weights);
- a plan of local producers only is a Mistral with ``sliding_window`` = our window W
  (query i sees key j iff 0 <= i - j < W); W - 1 and W + 1 must differ (negative
  controls: a test that passes for any window checks nothing).
"""

from __future__ import annotations

import random

import pytest
import torch

from mixkv_bench.reference import Reference
from sglang_mixkv.model_folder import SIZES, write_model_folder

SIZE = SIZES["tiny"]  # 12 layers, window 32, float32
N = 100  # prompt tokens: three windows and a bit, so the window edge is crossed often
# float32 on both sides, different summation orders: we observe ~9e-5 on these logits
# (range ~+-20); a convention error (window off by one, RoPE halves swapped) moves
# them by ~1-10. 2e-3 separates the two by more than an order of magnitude each way.
TOL = 2e-3


def prompt(seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, SIZE.vocab) for _ in range(N)]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def ids() -> list[int]:
    return prompt()


def test_standard_plan_is_transformers_llama(tmp_path, ids):
    from transformers import LlamaForCausalLM

    ours = write_model_folder(tmp_path / "mixkv", SIZE, "standard", weights=True, seed=3)
    llama = write_model_folder(tmp_path / "llama", SIZE, "standard", weights=True, seed=3,
                               architecture="LlamaForCausalLM")
    hf = LlamaForCausalLM.from_pretrained(str(llama), dtype=torch.float32,
                                          attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0]
    mine = Reference(ours).logits(ids)
    assert mine.shape == theirs.shape == (N, SIZE.vocab)
    assert mine.std() > 1.0  # informative logits, not a flat distribution
    assert max_diff(mine, theirs) < TOL
    assert torch.equal(mine.argmax(-1), theirs.argmax(-1))


def mistral(folder, window: int):
    """transformers' Mistral with the weights of our all-local folder and ``window``."""
    import json

    from safetensors.torch import load_file
    from transformers import MistralConfig, MistralForCausalLM

    c = json.loads((folder / "config.json").read_text())
    cfg = MistralConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
        head_dim=c["head_dim"], max_position_embeddings=c["max_position_embeddings"],
        rms_norm_eps=c["rms_norm_eps"], rope_parameters={"rope_type": "default",
                                                         "rope_theta": c["rope_theta"]},
        sliding_window=window, tie_word_embeddings=False, attn_implementation="eager")
    model = MistralForCausalLM(cfg).eval()
    missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")),
                                                strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return model


@pytest.fixture(scope="module")
def all_local(tmp_path_factory, ids):
    folder = write_model_folder(tmp_path_factory.mktemp("local") / "m", SIZE, "L" * 12,
                                weights=True, seed=4)
    return folder, Reference(folder).logits(ids)


@pytest.mark.parametrize("window, agrees", [(SIZE.window, True), (SIZE.window - 1, False),
                                            (SIZE.window + 1, False)])
def test_local_plan_is_transformers_mistral_with_our_window(all_local, ids, window, agrees):
    folder, mine = all_local
    with torch.no_grad():
        theirs = mistral(folder, window)(torch.tensor([ids])).logits[0]
    diff = max_diff(mine, theirs)
    if agrees:
        assert diff < TOL and torch.equal(mine.argmax(-1), theirs.argmax(-1))
        # inside the first window nothing is cut: the prefix agrees with any window
    else:
        assert diff > 100 * TOL, f"window {window} should differ from ours ({SIZE.window})"
        # ... and only from the first query that reaches past a window
        assert max_diff(mine[:min(window, SIZE.window)], theirs[:min(window, SIZE.window)]) < TOL


def test_teacher_forced_check_is_greedy_generation(tmp_path):
    """The tests check a server's greedy output in one reference forward pass
    (:meth:`Reference.teacher_forced`) instead of one per token (:meth:`generate`): the
    same tokens and logprobs for the greedy output, with Ada-KV's kept sets too, and a
    different token at the first position an output departs from greedy."""
    ref = Reference(write_model_folder(tmp_path / "ma", SIZE, "ma", weights=True, seed=1))
    ids = prompt(5)[:70]
    kept = {0: [list(range(0, 60, 3)) + list(range(62, 70)), list(range(10, 40)) + [69]]}
    for k in (None, kept):
        gen = ref.generate(ids, 8, kept=k)
        forced, prompt_lps = ref.teacher_forced(ids, gen.tokens, kept=k)
        assert forced.tokens == gen.tokens
        assert max(abs(a - b) for a, b in zip(forced.logprobs, gen.logprobs)) < 1e-5
        assert max(abs(a - b) for a, b in zip(prompt_lps, ref.prompt_logprobs(ids))) < 1e-5
        wrong = gen.tokens[:3] + [(gen.tokens[3] + 1) % SIZE.vocab] + gen.tokens[4:]
        got = ref.teacher_forced(ids, wrong, kept=k)[0].tokens
        assert got[:4] == gen.tokens[:4] and got != wrong
