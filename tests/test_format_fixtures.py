"""Files written by trimtune before the layered redesign still load, and compute what they computed.

The fixtures in tests/fixtures/formats_v1 were written by tests/fixtures/make_format_fixtures.py at
main 745e02a (before the redesign): each case holds its base model, the artifact, and the outputs
the writing code computed. Regenerating them would defeat the test; add a formats_v2 instead.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import trimtune as tt

FIXTURES = Path(__file__).parent / "fixtures" / "formats_v1"
IDS = torch.tensor([[3, 7, 11, 19, 23, 5], [2, 4, 6, 8, 10, 12]])
ADAPTERS = ["lora_llama", "lora_bert", "adalora_bert", "ia3_llama", "prompt_llama", "ptuning_llama", "prefix_llama"]


def base(case: str):
    cls = AutoModelForCausalLM if "llama" in case else AutoModelForSequenceClassification
    return cls.from_pretrained(FIXTURES / case / "base", use_safetensors=True).eval()


def base_at(case: str):  # the diff and sparse cases are on tiny BERT classifiers
    return AutoModelForSequenceClassification.from_pretrained(FIXTURES / case / "base", use_safetensors=True).eval()


def expected(case: str) -> torch.Tensor:
    return load_file(str(FIXTURES / case / "expected.safetensors"))["logits"]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("case", ADAPTERS)
def test_adapter_written_before_the_redesign_loads(case):
    model = base(case)
    before = logits(model)
    tt.load_adapter(model, FIXTURES / case / "adapter")
    model.eval()
    if before.shape == expected(case).shape:  # (prompts add positions: then the shapes differ)
        assert not torch.allclose(before, expected(case), atol=1e-3)  # the adapter changes the outputs...
    torch.testing.assert_close(logits(model), expected(case), atol=1e-5, rtol=1e-5)  # ...as it did


def test_diff_written_before_the_redesign_loads():
    model = base_at("diff")
    tt.load_diff(model, FIXTURES / "diff" / "artifact")
    torch.testing.assert_close(logits(model.eval()), expected("diff"), atol=1e-5, rtol=1e-5)


def test_shrunk_model_written_before_the_redesign_loads():
    model = tt.load_shrunk(FIXTURES / "shrunk" / "model").eval()
    torch.testing.assert_close(logits(model), expected("shrunk"), atol=1e-5, rtol=1e-5)


def test_sparse_masks_written_before_the_redesign_load():
    model = base_at("sparse")
    tt.load_sparse(model, FIXTURES / "sparse" / "pruned.safetensors")
    torch.testing.assert_close(logits(model.eval()), expected("sparse"), atol=1e-5, rtol=1e-5)
