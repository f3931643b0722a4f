"""Seam: no single request takes the server down. Requests whose token ids or
vocabulary-sized options are out of range are refused before anything reaches the
scheduler (SGLang 0.5.17 ``managers/tokenizer_manager.py``), and valid requests that
crashed the scheduler are fixed in :mod:`.crash_fixes`.

Why: stock 0.5.17 sends a prompt id outside ``[0, vocab)`` (``/generate``, batch rows,
``/v1/completions`` token prompts), a ``top_logprobs_num`` above the vocabulary, an
empty batch row or a ``logprob_start_len`` below -1 to the scheduler, where the forward
pass raises (an ``IndexError`` on CPU, a device-side assert on a GPU) and SGLang tears
the whole server down. Out-of-range ``stop_token_ids`` and booleans as ids were
accepted silently.

Invariants (checked on the request as the client sent it, single or batch, before
SGLang normalizes it, so a bad row of a batch refuses the whole batch):

- every token id a client gives (``input_ids``, each batch row,
  ``sampling_params.stop_token_ids``, ``token_ids_logprob``) is an integer (not a bool)
  in ``[0, vocab)``; a batch row is not empty;
- ``top_logprobs_num`` is an integer in ``[0, vocab]``; ``logprob_start_len`` >= -1;
  ``sampling_params.n`` >= 1 (stock: ``n: 0`` in a batch is a 500);
- ``sampling_params.custom_params`` is an object (SGLang's type; our Ada-KV hook reads it
  in the scheduler), and its ``adakv_kept`` (ours) a boolean;
- ``input_embeds`` (when neither ``text`` nor ``input_ids`` is given, which SGLang
  prefers) is one prompt or a batch of prompts, each a non-empty list of rows of exactly
  the model's hidden size of finite numbers: SGLang hands them to the model unchecked, and
  rows of another width raised in the forward pass, in the scheduler (the server exited);
- ``custom_logit_processor`` (a server started with ``--enable-custom-logit-processor``
  runs the code a client sends) deserializes to a processor, as the scheduler will
  (``sampling/custom_logit_processor.py:16-21``, from ``sampling_batch_info.py:165``),
  and, for a request without ``custom_params``, runs on a row of logits: a string that
  did not deserialize, or SGLang's own token filter without its parameters, stopped the
  server;
- ``session_params`` is an object of SGLang's ``SessionParams`` fields and types
  (``managers/io_struct.py:117-140``): the tokenizer builds it without checking them
  (``tokenizer_manager.py:1345-1347``) and the scheduler uses ``id`` as a dict key
  (``scheduler.py:2394``), so ``{"id": {}}`` took the server down;
- a per-prompt list (``sampling_params``, ``return_logprob``, ``logprob_start_len``,
  ``top_logprobs_num``, ``token_ids_logprob``, ``rid``) has one entry per prompt of a
  batch, and a single prompt gets no such list;
- a refusal is an HTTP 400 whose message names the field (with its index in a batch)
  and the bound, e.g. ``input_ids[1][0] = 512 is outside the vocabulary [0, 512)``.

Where (hooks through ``sglang.srt.plugins.hook_registry.HookRegistry``):

- AROUND ``TokenizerManager.generate_request`` (``tokenizer_manager.py:744``): the one
  door of every generate / encode request (``/generate``, ``/v1/completions``,
  ``/v1/chat/completions``, the Python Engine). It normalizes and then tokenizes and
  sends each prompt (``:751, :797-811``); checking first means nothing of a bad request
  is sent. The ``ValueError`` becomes a 400 there (``http_server.py:917-919``,
  ``openai/serving_base.py:114-119``).
- BEFORE ``TokenizerManager.create_abort_task`` (``tokenizer_manager.py:2134``): for a
  streamed request the route builds its ``StreamingResponse`` with this call
  (``http_server.py:906-910``, ``openai/serving_completions.py:214``,
  ``openai/serving_chat.py:1460``) before the first byte is sent, while
  ``generate_request`` runs only inside the stream, after the 200 status. Raising
  ``HTTPException(400)`` there turns a bad streamed request into a real 400
  (``http_server.py:524`` handler; ``serving_base.py:110-113``) instead of an error
  event inside a 200 stream.
- AFTER ``OpenAIServingCompletion._convert_to_internal_request``
  (``openai/serving_completions.py:66``): the same check on the request it built, but
  the message names the fields the client sent (``prompt``, ``logprobs``).

Requests carrying multimodal data are left to SGLang (its processor rewrites their ids).
Ids produced by the server's own tokenizer (text prompts, chat templates) are not
re-checked.
"""

from __future__ import annotations

import copy
import numbers
import re
from typing import Any, Callable, Mapping

#: ``custom_params`` key of ours (``mixkv/adakv.py``): asks for ``meta_info["adakv"]``
ADAKV_ASK = "adakv_kept"

GENERATE_REQUEST = "sglang.srt.managers.tokenizer_manager.TokenizerManager.generate_request"
CREATE_ABORT_TASK = "sglang.srt.managers.tokenizer_manager.TokenizerManager.create_abort_task"
COMPLETION_TO_INTERNAL = ("sglang.srt.entrypoints.openai.serving_completions."
                          "OpenAIServingCompletion._convert_to_internal_request")
#: ``/v1/completions`` field names of the internal fields (``serving_completions.py:66-160``).
COMPLETION_NAMES = {"input_ids": "prompt", "top_logprobs_num": "logprobs",
                    "stop_token_ids": "stop_token_ids"}

#: Per-prompt fields that may be given as one value or as a list with one entry per prompt.
_PER_PROMPT = ("sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num", "rid")


class InvalidRequest(ValueError):
    """A request SGLang must not run; its message names the field and the bound."""

    status_code = 400


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_ids(ids: Any, field: str, vocab: int, *, allow_empty: bool = True) -> None:
    """``ids`` is a list of integers in ``[0, vocab)``."""
    if not isinstance(ids, (list, tuple)):
        raise InvalidRequest(f"{field} must be a list of token ids, got {type(ids).__name__}")
    if not ids and not allow_empty:
        raise InvalidRequest(f"{field} is empty: a prompt needs at least one token id")
    if set(map(type, ids)) <= {int}:  # the common case: C-level passes, no Python loop
        if not ids or (min(ids) >= 0 and max(ids) < vocab):
            return
    for j, x in enumerate(ids):
        if not _is_int(x):
            raise InvalidRequest(f"{field}[{j}] = {x!r} is not an integer token id")
        if not 0 <= x < vocab:
            raise InvalidRequest(f"{field}[{j}] = {x} is outside the vocabulary [0, {vocab})")


def _each(value: Any, batch: int | None) -> list[tuple[str, Any]]:
    """(index suffix, value) per prompt of a per-prompt field given as a list or not."""
    if isinstance(value, list) and batch is not None:
        return [(f"[{i}]", v) for i, v in enumerate(value)]
    return [("", value)]


def _batch_size(obj: Any) -> int | None:
    """Prompts in a batch request, None for a single prompt (SGLang's rule,
    ``io_struct.py:410-437``, without normalizing ``obj``)."""
    text, ids = getattr(obj, "text", None), getattr(obj, "input_ids", None)
    if text is not None:
        return None if isinstance(text, str) else len(text)
    if isinstance(ids, list) and ids and isinstance(ids[0], list):
        return len(ids)
    return None


def check_request(obj: Any, vocab: int, names: Mapping[str, str] | None = None,
                  hidden: int | None = None) -> None:
    """Raise :class:`InvalidRequest` unless ``obj`` (a ``GenerateReqInput`` or
    ``EmbeddingReqInput`` as the client sent it) meets the invariants above. ``names``
    maps internal field names to the ones the client used (``COMPLETION_NAMES``);
    ``hidden``: the model's hidden size (None: embeddings are not checked)."""
    names = names or {}
    ids_name = names.get("input_ids", "input_ids")
    contains_mm = getattr(obj, "contains_mm_input", None)
    if callable(contains_mm) and contains_mm():
        return
    batch = _batch_size(obj)
    ids = getattr(obj, "input_ids", None)
    if ids is not None and getattr(obj, "text", None) is None:
        if batch is None:
            _check_ids(ids, ids_name, vocab)
        else:
            for i, row in enumerate(ids):
                _check_ids(row, f"{ids_name}[{i}]", vocab, allow_empty=False)

    for name in _PER_PROMPT:
        value = getattr(obj, name, None)
        if isinstance(value, list):
            if batch is None:
                raise InvalidRequest(f"{name} is a list, but the request has a single prompt")
            if len(value) != batch:
                raise InvalidRequest(f"{name} has {len(value)} entries for a batch of {batch} "
                                     "prompts")

    params = getattr(obj, "sampling_params", None)
    for idx, sp in _each(params, batch):
        if sp is None:
            continue
        if not isinstance(sp, dict):
            raise InvalidRequest(f"sampling_params{idx} must be an object, got {type(sp).__name__}")
        custom = sp.get("custom_params")
        if custom is not None and not isinstance(custom, dict):
            raise InvalidRequest(f"sampling_params{idx}.custom_params must be an object, got "
                                 f"{type(custom).__name__}")
        if custom is not None and not isinstance(custom.get(ADAKV_ASK, False), bool):
            raise InvalidRequest(f"sampling_params{idx}.custom_params.{ADAKV_ASK} must be true "
                                 f"or false, got {custom[ADAKV_ASK]!r}")
        n_samples = sp.get("n", 1)
        if not (_is_int(n_samples) and n_samples >= 1):
            raise InvalidRequest(f"sampling_params{idx}.n = {n_samples!r} must be an integer >= 1")
        _check_sampling_types(sp, f"sampling_params{idx}")
        stop = sp.get("stop_token_ids")
        if stop is not None:
            field = (names.get("stop_token_ids", "sampling_params.stop_token_ids") if not idx
                     else f"sampling_params{idx}.stop_token_ids")
            _check_ids(list(stop) if isinstance(stop, (set, frozenset)) else stop, field, vocab)

    for idx, k in _each(getattr(obj, "top_logprobs_num", None), batch):
        if k is not None and not (_is_int(k) and 0 <= k <= vocab):
            raise InvalidRequest(f"{names.get('top_logprobs_num', 'top_logprobs_num')}{idx} = "
                                 f"{k!r} is outside [0, {vocab}] "
                                 f"(the vocabulary size)")

    for idx, s in _each(getattr(obj, "logprob_start_len", None), batch):
        if s is not None and not (_is_int(s) and s >= -1):
            raise InvalidRequest(f"logprob_start_len{idx} = {s!r} must be -1 (no prompt "
                                 f"logprobs) or a position >= 0")

    embeds = getattr(obj, "input_embeds", None)
    if (embeds is not None and hidden and getattr(obj, "text", None) is None
            and getattr(obj, "input_ids", None) is None):
        _check_embeds(embeds, hidden)

    processors = getattr(obj, "custom_logit_processor", None)
    if processors is not None:
        for i, (idx, text) in enumerate(_each(processors, batch)):
            sp = params[i] if isinstance(params, list) and i < len(params) else params
            custom = sp.get("custom_params") if isinstance(sp, dict) else None
            if text is not None:
                _check_logit_processor(text, f"custom_logit_processor{idx}", custom, vocab)

    session = getattr(obj, "session_params", None)
    if session:
        _check_session_params(session)

    tids = getattr(obj, "token_ids_logprob", None)
    if tids:
        if isinstance(tids, list) and any(r is None or isinstance(r, list) for r in tids):
            if batch is None or len(tids) != batch:
                what = "a single prompt" if batch is None else f"a batch of {batch}"
                raise InvalidRequest(f"token_ids_logprob has {len(tids)} lists for {what}")
            for i, row in enumerate(tids):
                if row is not None:
                    _check_ids(row, f"token_ids_logprob[{i}]", vocab)
        else:
            _check_ids(tids, "token_ids_logprob", vocab)


def _check_embeds(embeds: Any, hidden: int) -> None:
    """``input_embeds``: one prompt (rows of ``hidden`` finite numbers) or a batch of
    them (SGLang's rule, ``io_struct.py:431``: a batch when the first row is a list)."""
    import numpy as np

    if not isinstance(embeds, list) or not embeds or not isinstance(embeds[0], list):
        raise InvalidRequest("input_embeds must be a non-empty list of embedding rows (or a "
                             "batch of such lists)")
    single = not embeds[0] or not isinstance(embeds[0][0], list)
    for idx, rows in [("", embeds)] if single else [(f"[{i}]", p) for i, p in enumerate(embeds)]:
        if not isinstance(rows, list) or not rows:
            raise InvalidRequest(f"input_embeds{idx} is empty: a prompt needs at least one row")
        try:
            a = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError):
            a = None
        if a is None or a.ndim != 2 or a.shape[1] != hidden:
            raise InvalidRequest(f"input_embeds{idx} must be rows of {hidden} numbers each (the "
                                 "model's hidden size)")
        if not np.isfinite(a).all():
            raise InvalidRequest(f"input_embeds{idx} holds a value that is not a finite number")


def _check_logit_processor(text: Any, field: str, custom_params: Any, vocab: int) -> None:
    """``text`` is what ``CustomLogitProcessor.to_str`` makes (JSON holding the hex of a
    dill-pickled processor class): deserialized here as the scheduler will. A request
    without ``custom_params`` reaches the processor exactly as here, with ``[None]``
    (SGLang adds its ``Req`` as ``__req__`` only to a dict, ``schedule_batch.py:876-880``):
    the processor is called once on a row of zero logits and must return logits of that
    shape. In the scheduler it runs inside a batch's sampling (``layers/sampler.py:
    759-792``), where an exception stopped the server (SGLang's own
    ``DisallowedTokensLogitsProcessor`` without ``custom_params.token_ids`` did). A
    processor that fails only on some logits, or only with some ``custom_params``, still
    reaches the scheduler."""
    import torch
    from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor

    try:  # SGLang's own deserializer, cached per string as in the scheduler
        processor = CustomLogitProcessor.from_str(text)
    except Exception as e:  # noqa: BLE001 - whatever a client's bytes make fail
        raise InvalidRequest(f"{field} is not a serialized logit processor (CustomLogitProcessor"
                             f".to_str()): {type(e).__name__}") from None
    if custom_params is not None:
        return
    logits = torch.zeros(1, vocab)
    try:
        out = processor(logits.clone(), [None])
    except Exception as e:  # noqa: BLE001
        raise InvalidRequest(f"{field} raised {type(e).__name__} without custom_params: "
                             f"{e}"[:500]) from None
    if not isinstance(out, torch.Tensor) or out.shape != logits.shape:
        raise InvalidRequest(f"{field} must return the logits it is given (a tensor of their "
                             "shape)")


_schemas: dict[str, Any] = {}


def _schema(name: str, struct: type, skip: frozenset = frozenset(),
            not_null: frozenset = frozenset()):
    """A strict request schema from one of SGLang's msgspec Structs: its fields (less
    ``skip``) and defaults, keyword form, no unknown fields, null allowed where SGLang
    reads null as the default (every field but those in ``not_null``)."""
    from typing import Optional

    import msgspec

    if name not in _schemas:
        fields = [(f.name, f.type if f.name in not_null else Optional[f.type], f.default)
                  for f in msgspec.structs.fields(struct) if f.name not in skip]
        _schemas[name] = msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=True)
    return _schemas[name]


def _convert(value: Any, schema: type, where: str, what: str) -> None:
    """Raise :class:`InvalidRequest` naming the field unless ``value`` fits ``schema``."""
    import msgspec

    try:
        msgspec.convert(value, schema)
    except msgspec.ValidationError as e:
        text = str(e)
        m = re.search(r"(.*) - at `\$(.*)`$", text)
        field, why = (f"{where}{m.group(2)}", m.group(1)) if m else (where, text)
        if why.startswith("Object contains unknown field"):
            raise InvalidRequest(f"{where}: {why.split('`')[1]!r} is not {what} of SGLang "
                                 "0.5.17") from None
        raise InvalidRequest(f"{field}: {why[0].lower() + why[1:]}") from None


def _check_session_params(session: Any) -> None:
    """``session_params`` against SGLang's ``SessionParams`` (all fields optional)."""
    from sglang.srt.managers.io_struct import SessionParams

    _convert(session, _schema("SessionParamsRequest", SessionParams), "session_params",
             "a session parameter")


#: ``SamplingParams`` fields SGLang fills itself (``sampling/sampling_params.py:86-91``)
_INTERNAL_SAMPLING = {"stop_strs", "stop_regex_strs", "stop_str_max_len", "stop_regex_max_len",
                      "is_normalized"}


def _check_sampling_types(sp: dict, where: str) -> None:
    """``sp`` against SGLang's own ``SamplingParams`` annotations (a msgspec Struct,
    ``sampling/sampling_params.py:45-84``), null allowed where SGLang reads it as the
    default (its ``__post_init__``): a field SGLang does not know, or a value of another
    type, is a 400 naming it. Stock 0.5.17 raised TypeError for both (a 500), and a
    ``custom_params`` value nested deeper than its type says would reach the scheduler."""
    from sglang.srt.sampling.sampling_params import SamplingParams

    _convert(sp, _schema("SamplingParamsRequest", SamplingParams, frozenset(_INTERNAL_SAMPLING),
                         not_null=frozenset({"n"})), where, "a sampling parameter")


def _vocab(tokenizer_manager: Any) -> int:
    return int(tokenizer_manager.model_config.vocab_size)


def _hidden(tokenizer_manager: Any) -> int | None:
    return int(getattr(tokenizer_manager.model_config, "hidden_size", 0) or 0) or None


def validate_generate_request(original: Callable, self: Any, obj: Any, *args: Any, **kwargs: Any):
    """AROUND hook on ``TokenizerManager.generate_request`` (an async generator): check
    ``obj``, then hand over to SGLang. The check runs on the first ``__anext__``, where
    SGLang's own validation errors surface, so its callers turn it into a 400. An ``obj``
    SGLang already normalized (``is_single`` set) is not a client's request as sent and
    is left to SGLang."""

    async def gen():
        if getattr(obj, "is_single", None) is None:
            check_request(obj, _vocab(self), hidden=_hidden(self))
        async for out in original(self, obj, *args, **kwargs):
            yield out

    return gen()


def validate_completion(result: Any, self: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER hook on ``OpenAIServingCompletion._convert_to_internal_request``: check the
    internal request it built, naming the ``/v1/completions`` fields in the message
    (``prompt``, ``logprobs``); ``serving_base.py:114-119`` makes the error a 400."""
    check_request(result[0], _vocab(self.tokenizer_manager), COMPLETION_NAMES)
    return None


def validate_before_stream(self: Any, obj: Any, *args: Any, **kwargs: Any) -> None:
    """BEFORE hook on ``TokenizerManager.create_abort_task``: refuse a bad streamed request
    with an HTTP 400 before its route commits to a 200 stream.

    Also runs SGLang's own normalization on a copy: a streamed request it refuses (e.g.
    ``input_ids: []``) otherwise fails inside the stream, and then the abort task reads
    the never-set ``obj.is_single`` (``tokenizer_manager.py:2138``), an exception in the
    ASGI app that drops the connection. An ``obj`` already normalized (``/v1/completions``
    pulls its first chunk before building the response, ``serving_completions.py:202``)
    has been through :func:`validate_generate_request`."""
    from fastapi import HTTPException

    if getattr(obj, "is_single", None) is not None:
        return None
    try:
        check_request(obj, _vocab(self), hidden=_hidden(self))
        copy.deepcopy(obj).normalize_batch_and_arguments()
    except ValueError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None
    return None
