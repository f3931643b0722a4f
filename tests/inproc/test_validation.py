"""``sglang_seams.validation`` in-process (no server): what it refuses and with what
message, that its hooks land on SGLang 0.5.17's real functions, and the crash fixes.
The same inputs against the real server: tests/server/test_fuzz.py."""

from __future__ import annotations


import pytest
import torch

from sglang_mixkv.sglang_seams.patches import crash_fixes as fix
from sglang_mixkv.sglang_seams.patches import validation as v

V = 512


def gen(**kw):
    from sglang.srt.managers.io_struct import GenerateReqInput

    return GenerateReqInput(**kw)


GOOD = [
    dict(input_ids=[0, 5, V - 1]),
    dict(input_ids=[[5], [6, 7]], sampling_params=[{}, {"stop_token_ids": [V - 1]}]),
    dict(input_ids=[5], return_logprob=True, top_logprobs_num=V, token_ids_logprob=[0, V - 1]),
    dict(input_ids=[[5], [6]], token_ids_logprob=[[1], None], top_logprobs_num=[0, 3]),
    dict(input_ids=[5], logprob_start_len=-1, sampling_params={"n": 2}),
    dict(text="t5 t6", sampling_params={"stop_token_ids": {2, 3}}),
    dict(input_ids=[5], sampling_params={"custom_params": {"adakv_kept": True, "x": [1]}}),
    dict(input_ids=[5], sampling_params={"custom_params": None}),
]

BAD = [  # (request, words of the message)
    # issue 31: a string here raised in Ada-KV's scheduler hook and stopped the server
    (dict(input_ids=[5], sampling_params={"custom_params": "adakv_kept"}),
     ["sampling_params.custom_params", "object", "str"]),
    (dict(input_ids=[[5], [6]], sampling_params=[{}, {"custom_params": [1]}]),
     ["sampling_params[1].custom_params", "object"]),
    (dict(input_ids=[5], sampling_params={"custom_params": {"adakv_kept": "yes"}}),
     ["custom_params.adakv_kept", "true or false", "'yes'"]),
    (dict(input_ids=[5, V]), ["input_ids[1] = 512", "[0, 512)"]),
    (dict(input_ids=[-1]), ["input_ids[0] = -1", "[0, 512)"]),
    (dict(input_ids=[5, True]), ["input_ids[1]", "not an integer"]),
    (dict(input_ids=[5, 2.0]), ["input_ids[1]", "not an integer"]),
    (dict(input_ids=[[5], []]), ["input_ids[1]", "empty"]),
    (dict(input_ids=[[5], [6, 99999]]), ["input_ids[1][1] = 99999"]),
    (dict(input_ids=[5], top_logprobs_num=V + 1), ["top_logprobs_num = 513", "[0, 512]"]),
    (dict(input_ids=[5], top_logprobs_num=-1), ["top_logprobs_num = -1"]),
    (dict(input_ids=[[5], [6]], top_logprobs_num=[1, 10**5]), ["top_logprobs_num[1]"]),
    (dict(input_ids=[5], token_ids_logprob=[V]), ["token_ids_logprob[0] = 512"]),
    (dict(input_ids=[[5], [6]], token_ids_logprob=[[1], [-2]]), ["token_ids_logprob[1][0] = -2"]),
    (dict(input_ids=[5], token_ids_logprob=[[1]]), ["token_ids_logprob", "single prompt"]),
    (dict(input_ids=[5], sampling_params={"stop_token_ids": [V]}),
     ["sampling_params.stop_token_ids[0] = 512"]),
    (dict(input_ids=[[5], [6]], sampling_params=[{}, {"stop_token_ids": [-3]}]),
     ["sampling_params[1].stop_token_ids[0] = -3"]),
    (dict(text="t5", sampling_params={"stop_token_ids": [600]}), ["stop_token_ids[0] = 600"]),
    (dict(input_ids=[5], logprob_start_len=-5), ["logprob_start_len = -5", "-1"]),
    (dict(input_ids=[5], sampling_params={"n": 0}), ["sampling_params.n = 0", ">= 1"]),
    (dict(input_ids=[[5], [6]], sampling_params=[{}]),
     ["sampling_params has 1 entries", "batch of 2"]),
    (dict(input_ids=[5], sampling_params=[{}]), ["sampling_params is a list", "single prompt"]),
    (dict(input_ids=[5], rid=["a", "b"]), ["rid is a list"]),
]


@pytest.mark.parametrize("kw", GOOD)
def test_accepts(kw):
    v.check_request(gen(**kw), V)


@pytest.mark.parametrize("kw,words", BAD)
def test_refuses_naming_field_and_bound(kw, words):
    with pytest.raises(v.InvalidRequest) as e:
        v.check_request(gen(**kw), V)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert e.value.status_code == 400 and isinstance(e.value, ValueError)


H = 8  # a hidden size


@pytest.mark.parametrize("embeds,words", [
    ([[0.1] * 3] * 2, ["input_embeds must be rows of 8 numbers"]),  # the wrong width
    ([[0.1] * H, [0.1] * 3], ["input_embeds must be rows of 8"]),  # ragged
    ([[[0.1] * H] * 2, [[0.1] * 4]], ["input_embeds[1] must be rows of 8"]),  # a batch row
    ([[[0.1] * H], []], ["input_embeds[1] is empty"]),
    ([[float("inf")] + [0.1] * (H - 1)], ["input_embeds holds a value that is not a finite"]),
    ([[float("nan")] * H], ["not a finite number"]),
    ([], ["non-empty list"]),
])
def test_embeddings_of_the_wrong_width_are_refused(embeds, words):
    """Rows of another width than the model's hidden size raised in the forward pass, in
    the scheduler, and the server exited (found by hand on an Ada-KV server)."""
    with pytest.raises(v.InvalidRequest) as e:
        v.check_request(gen(input_embeds=embeds), V, hidden=H)
    assert all(w in str(e.value) for w in words), str(e.value)
    v.check_request(gen(input_embeds=[[0.1] * H] * 3), V, hidden=H)
    v.check_request(gen(input_embeds=[[[0.1] * H] * 3, [[-2.0] * H]]), V, hidden=H)
    v.check_request(gen(input_ids=[5], input_embeds=[[0.1] * 3]), V, hidden=H)  # ids win


def test_logit_processors_that_would_stop_the_scheduler_are_refused():
    """On a server that runs client code (--enable-custom-logit-processor) the scheduler
    deserializes and calls it inside a batch's sampling, where a raise stopped the server.
    Refused here: a string that does not deserialize, and, for a request without
    custom_params (which the scheduler calls the same way), a processor that raises or
    returns other than its logits."""
    from sglang.srt.sampling.custom_logit_processor import (CustomLogitProcessor,
                                                            DisallowedTokensLogitsProcessor)

    from mixkv_bench.forced import ForcedKeys

    class Shrinks(CustomLogitProcessor):
        def __call__(self, logits, custom_param_list=None):
            return logits[:, :3]

    disallow = DisallowedTokensLogitsProcessor.to_str()
    for kw, words in [
        (dict(custom_logit_processor="garbage"), ["not a serialized logit processor"]),
        (dict(custom_logit_processor='{"callable": "zz"}'), ["not a serialized", "ValueError"]),
        (dict(custom_logit_processor=disallow), ["raised TypeError without custom_params"]),
        (dict(custom_logit_processor=Shrinks.to_str()), ["must return the logits"]),
        (dict(input_ids=[[5], [6]], custom_logit_processor=[disallow, disallow],
              sampling_params=[{"custom_params": {"token_ids": [5]}}, {}]),
         ["custom_logit_processor[1] raised"]),
    ]:
        with pytest.raises(v.InvalidRequest) as e:
            v.check_request(gen(**{"input_ids": [5, 6], **kw}), V)
        assert all(w in str(e.value) for w in words), str(e.value)
    for kw in [dict(custom_logit_processor=disallow, sampling_params={"custom_params": {
                   "token_ids": [5]}}),
               dict(custom_logit_processor=ForcedKeys.to_str()),  # the quality harness's
               dict(custom_logit_processor=ForcedKeys.to_str(),
                    sampling_params={"custom_params": {"keys": [7]}})]:
        v.check_request(gen(input_ids=[5, 6], **kw), V)


def test_completions_names_the_openai_fields():
    with pytest.raises(v.InvalidRequest, match=r"prompt\[1\] = 512"):
        v.check_request(gen(input_ids=[5, V]), V, v.COMPLETION_NAMES)
    with pytest.raises(v.InvalidRequest, match=r"^logprobs = 600"):
        v.check_request(gen(input_ids=[5], top_logprobs_num=600), V, v.COMPLETION_NAMES)


def test_stream_precheck_is_an_http_400_before_normalization():
    from fastapi import HTTPException

    class TM:
        class model_config:
            vocab_size = V

    with pytest.raises(HTTPException) as e:
        v.validate_before_stream(TM(), gen(input_ids=[5, V], stream=True))
    assert e.value.status_code == 400 and "input_ids[1]" in e.value.detail
    with pytest.raises(HTTPException, match="empty"):  # SGLang's own normalization error
        v.validate_before_stream(TM(), gen(input_ids=[], stream=True))
    ok = gen(input_ids=[[5], [6]], sampling_params={"n": 2}, stream=True)
    assert v.validate_before_stream(TM(), ok) is None
    ok.normalize_batch_and_arguments()  # normalized objects passed generate_request already
    assert v.validate_before_stream(TM(), ok) is None


def test_token_ids_logprobs_placeholders_become_tensors():
    """Stock: ``[]`` beside tensors, and ``.tolist()`` on it killed the scheduler."""
    from sglang.srt.layers.logprob_processor import LogprobStage, get_token_ids_logprobs_raw

    logprobs = torch.randn(3, V).log_softmax(-1)
    ids = [[1, 2], None, [V - 1]]
    res = get_token_ids_logprobs_raw.__wrapped__(logprobs, ids, LogprobStage.DECODE,
                                                 no_copy_to_cpu=True) \
        if hasattr(get_token_ids_logprobs_raw, "__wrapped__") else \
        get_token_ids_logprobs_raw(logprobs, ids, LogprobStage.DECODE, no_copy_to_cpu=True)
    assert res[0][1] == []  # the stock placeholder
    vals, idxs = fix.token_ids_logprobs_as_tensors(res, logprobs, ids, LogprobStage.DECODE,
                                                 no_copy_to_cpu=True)
    assert [x.tolist() for x in vals][1] == [] and idxs == res[1]
    assert vals[0].tolist() == logprobs[0, [1, 2]].tolist()
    cpu = get_token_ids_logprobs_raw(logprobs, ids, LogprobStage.DECODE)  # lists: untouched
    assert fix.token_ids_logprobs_as_tensors(cpu, logprobs, ids, LogprobStage.DECODE) is None


def test_grammar_mask_on_cpu():
    """Stock: a pinned bitmask (needs an accelerator) and no CPU apply."""
    mask = fix.unpinned_token_bitmask(V, 2)
    assert (mask == -1).all() and not mask.is_pinned()
    mask[0].zero_()  # row 0: nothing allowed; row 1: everything
    mask[0, 0] = 1 << 5  # ... but token 5
    logits = torch.zeros(2, V)
    fix.apply_vocab_mask_on_cpu(lambda *a: pytest.fail("not for CPU"), None, logits, mask)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [5]
    assert torch.isfinite(logits[1]).all()


def test_a_row_without_any_allowed_token_samples_instead_of_raising():
    logits = torch.tensor([[float("-inf")] * 4, [0.0, float("-inf"), 1.0, 2.0]])
    out = fix.no_all_masked_rows(lambda self, x, *a: x, None, logits.clone(), None)
    assert out[0].tolist() == [0.0] * 4
    assert torch.equal(out[1], logits[1])
    torch.multinomial(out.softmax(-1), 1)  # stock: RuntimeError on the first row


def test_meta_info_always_has_input_top_logprobs():
    meta = {"input_token_logprobs": []}
    fix.input_top_logprobs_always(None, None, meta)
    assert meta["input_top_logprobs"] == []
    meta = {"input_top_logprobs": [[1]]}
    fix.input_top_logprobs_always(None, None, meta)
    assert meta["input_top_logprobs"] == [[1]]


# ---- the last guard: our per-request work fails its request, not the scheduler -----------
def test_a_failing_compression_aborts_that_request_only(monkeypatch):
    """Ada-KV's hook raising for one request (here: its compression) finishes that
    request with a 500 and compresses the others of the batch; nothing propagates."""
    from types import SimpleNamespace

    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    from sglang_mixkv.adakv import AdaKVConfig
    from sglang_mixkv.plan import resolve
    from sglang_mixkv.sglang_seams.mixkv import adakv as seam

    hook = seam.ModelHook(AdaKVConfig(budget=16, window=4), resolve("ma", 12))
    reqs = [SimpleNamespace(rid=f"r{i}", to_finish=None, sampling_params=None) for i in range(3)]
    states = [seam.State(prompt_len=20) for _ in reqs]
    hook.batch = [(r, st, j) for j, (r, st) in enumerate(zip(reqs, states))]
    fb = SimpleNamespace(extend_prefix_lens_cpu=[0, 0, 0], extend_seq_lens_cpu=[20, 20, 20],
                         batch_size=3)
    done = SimpleNamespace(seconds=0.0)

    def compress(req, st, fb, layers):
        if req.rid == "r1":
            raise RuntimeError("a bug of ours")
        return done

    monkeypatch.setattr(hook, "_compress", compress)
    hook.finish(fb, layers=None, logits_output=None)
    assert isinstance(reqs[1].to_finish, FINISH_ABORT)
    assert reqs[1].to_finish.status_code == 500 and "Ada-KV compression" in reqs[1].to_finish.message
    assert states[1].compressed is None
    assert [reqs[i].to_finish for i in (0, 2)] == [None, None]
    assert states[0].compressed is done and states[2].compressed is done
