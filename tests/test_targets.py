"""Target selection: every spec is a predicate; defaults per architecture; clear errors."""

import pytest
from torch import nn

import trimtune as tt
from trimtune.core.targets import select


def test_regex_matches_on_component_boundaries(tiny_bert):
    names = select(tiny_bert, "query|value")
    assert names == [f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]
    assert select(tiny_bert, r"layer\.0\..*query") == ["bert.encoder.layer.0.attention.self.query"]
    assert select(tiny_bert, "dense") != select(tiny_bert, "output.dense")  # suffix on boundaries


def test_names_glob_type_and_predicate(tiny_bert):
    assert select(tiny_bert, ["self.key"]) == [f"bert.encoder.layer.{i}.attention.self.key" for i in (0, 1)]
    assert select(tiny_bert, tt.by_glob("*.layer.1.*.value")) == ["bert.encoder.layer.1.attention.self.value"]
    embeddings = select(tiny_bert, nn.Embedding)
    assert len(embeddings) == 3 and all("embeddings" in n for n in embeddings)
    assert select(tiny_bert, lambda name, m: name.endswith("classifier")) == ["classifier"]


@pytest.mark.parametrize(
    "fixture, expected",
    [("tiny_bert", ("query", "value")), ("tiny_llama", ("q_proj", "v_proj")), ("tiny_gpt2", ("c_attn",))],
)
def test_defaults_per_architecture(fixture, expected, request):
    model = request.getfixturevalue(fixture)
    names = select(model, None)
    assert len(names) == 2 * len(expected)
    assert {n.split(".")[-1] for n in names} == set(expected)


def test_all_linear_excludes_the_output_head(tiny_llama, tiny_bert):
    llama = select(tiny_llama, "all-linear")
    assert "lm_head" not in llama and len(llama) == 2 * 7
    assert "classifier" not in select(tiny_bert, "all-linear")


def test_nothing_matched_lists_candidates(tiny_bert):
    with pytest.raises(tt.TargetError, match=r"matched no module\. Wrappable layers .*query.*classifier"):
        select(tiny_bert, "q_proj")


def test_unsupported_match_names_module_and_types(tiny_bert):
    with pytest.raises(tt.TargetError, match=r"cannot be wrapped: bert\.encoder\.layer\.0\.attention \(BertAttention\)"):
        select(tiny_bert, "attention")


def test_no_default_for_unknown_architecture():
    with pytest.raises(tt.TargetError, match=r"no default targets for model type None \(Sequential\)"):
        tt.apply(nn.Sequential(nn.Linear(2, 2)), tt.LoraConfig())


def test_wrapped_layers_are_seen_through_and_deltas_never_targeted(tiny_bert):
    tt.apply(tiny_bert, tt.LoraConfig(r=2))
    assert select(tiny_bert, nn.Linear) == select(tiny_bert, "query|key|value|dense|classifier")
    assert not any(".deltas." in n for n in select(tiny_bert, lambda n, m: isinstance(m, nn.Linear)))
