"""Layer plans: grammar, presets against the design's table, errors, config round trip."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_mixkv import plan as plans
from sglang_mixkv.plan import PlanError, from_config, parse, preset, resolve, to_config

# The preset table of the project's design (README "Layer plans"), verbatim (spaces are
# for reading only).
DESIGN_24 = {
    "standard": ("GGGGGG GGGGGG GGGGGG GGGGGG", 24, 0),
    "swa": ("GLLLLL GLLLLL GLLLLL LLLLLG", 4, 20),
    "ma": ("GLlLll gLlLll gLlLll LlLllg", 1, 8),
    "ma-offset": ("LlLllG LlLllg LlLllg LlLllg", 1, 8),
    "ma-endslide": ("GLlLll gLlLll gLlLll LlLlll", 1, 8),
    "ma-pairs": ("GLlLll gLlLll GLlLll LlLllg", 2, 8),
    "ma-successive": ("LlLlll LlLlll LlLlll LlGggg", 1, 7),
    "ma-noshare": ("GLlLll GLlLll GLlLll LlLllG", 4, 8),
    "yoco": ("LLLLLL LLLLLL Gggggg gggggg", 1, 12),
    "cla2": ("Gg" * 12, 12, 0),
    "cla3": ("Ggg" * 8, 8, 0),
}


@pytest.mark.parametrize("name", list(DESIGN_24))
def test_presets_match_design_table(name):
    text, n_global, n_local = DESIGN_24[name]
    p = preset(name, 24)
    assert p == parse(text)
    assert p.pretty() == text if " " in text else str(p) == text.replace(" ", "")
    assert (len(p.global_producers), len(p.local_producers)) == (n_global, n_local)


def test_every_preset_is_defined_in_the_table():
    assert set(plans.PRESET_NAMES) == set(DESIGN_24)


@pytest.mark.parametrize("name", plans.PRESET_NAMES)
@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 12, 13, 18, 32, 48])
def test_presets_valid_for_any_layer_count(name, n):
    p = preset(name, n)
    assert len(p) == n and p.is_producer(0)


def test_ma_for_12_layers_keeps_its_rule():
    assert preset("ma", 12).pretty() == "GLlLll LlLllg"
    assert preset("ma-offset", 12).pretty() == "LlLllG LlLllg"
    assert preset("yoco", 12).pretty() == "LLLLLL Gggggg"


def test_explicit_sources_and_canonical_string():
    p = parse("G L g0 l1")
    assert p.sources == [0, 1, 0, 1]
    assert str(p) == "GLgl"  # nearest producers need no index
    q = parse("GGg0")
    assert q.sources == [0, 1, 0] and str(q) == "GGg0"
    assert parse(str(q)) == q


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty plan"),
        ("  _ ", "empty plan"),
        ("GLx", "layer 2: unknown letter 'x'"),
        ("gG", "layer 0: global consumer 'g' comes before any global producer"),
        ("GlL", "layer 1: local consumer 'l' comes before any local producer"),
        ("GLl0", "layer 2: local consumer reads layer 0, a global producer"),
        ("GGg1g2", "layer 3: reads layer 2, which is itself a consumer"),
        ("Gg5", "layer 1: reads layer 5, but a consumer must read an earlier layer"),
        ("G3", "layer 0: producer G cannot name a source"),
    ],
)
def test_errors_name_layer_and_rule(text, fragment):
    with pytest.raises(PlanError) as e:
        parse(text)
    assert fragment in str(e.value)


def test_resolve_checks_layer_count_and_names():
    assert resolve("ma", 12) == preset("ma", 12)
    with pytest.raises(PlanError, match="has 3 layers but the model has 12"):
        resolve("GLl", 12)
    with pytest.raises(PlanError, match="unknown letter"):
        resolve("mx", 12)
    with pytest.raises(PlanError, match="unknown preset"):
        preset("nope", 12)


def test_config_fields_for_sglang():
    cfg = to_config(preset("ma", 12), window=32)
    assert cfg["is_hybrid_swa"] is True
    # 0 = global producer (full pool), 1 = local producer (SWA pool), 2 = no buffer
    assert cfg["hybrid_layer_pattern"] == [0, 1, 2, 1, 2, 2, 1, 2, 1, 2, 2, 2]
    assert cfg["sliding_window"] == 32
    assert cfg["kv_source_layers"] == [0, 1, 1, 3, 3, 3, 6, 6, 8, 8, 8, 0]
    std = to_config(preset("standard", 4))
    assert std["is_hybrid_swa"] is False and std["hybrid_layer_pattern"] is None
    assert to_config(preset("cla2", 4))["hybrid_layer_pattern"] == [0, 2, 0, 2]


def test_config_disagreement_is_an_error():
    cfg = to_config(preset("ma", 12))
    cfg["kv_source_layers"] = [0] * 12
    with pytest.raises(PlanError, match="kv_source_layers"):
        from_config(cfg)
    with pytest.raises(PlanError, match="no 'mixkv_plan'"):
        from_config({"num_hidden_layers": 2})
    bad = to_config(preset("ma", 12)) | {"mixkv_plan": "GLlQ"}
    with pytest.raises(PlanError, match="unknown letter 'Q'"):
        from_config(bad)


@st.composite
def plan_strings(draw):
    """Random valid plans, with and without explicit sources."""
    n = draw(st.integers(1, 40))
    out, producers = [], {"global": [], "local": []}
    for i in range(n):
        kind = draw(st.sampled_from(["global", "local"]))
        have = producers[kind]
        if i == 0 or not have or draw(st.booleans()):
            out.append("G" if kind == "global" else "L")
            have.append(i)
        else:
            src = draw(st.sampled_from(have))
            letter = "g" if kind == "global" else "l"
            out.append(letter + (str(src) if draw(st.booleans()) else ""))
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(plan_strings(), st.integers(1, 8192))
def test_config_round_trip(text, window):
    p = parse(text)
    assert parse(str(p)) == p
    cfg = to_config(p, window)
    assert from_config(cfg) == p
    assert cfg["sliding_window"] == window
    pattern = cfg["hybrid_layer_pattern"] or [0] * len(p)
    assert sum(1 for x in pattern if x in (0, 1)) == len(p.producers)
