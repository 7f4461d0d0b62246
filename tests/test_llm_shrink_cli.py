"""`trimtune shrink --model`: a causal LM directory made physically smaller, block by block, then
evaluated, and recovered by `trimtune tune` distilling from the dense directory."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from test_llm_prune_cli import text_file  # noqa: F401 (a fixture: the demo reviews as one text file)
from trimtune.cli import main

LM_TEXTS = Path(__file__).resolve().parents[1] / "examples" / "data" / "lm_texts"


@pytest.fixture(scope="module")
def gqa_llama(tmp_path_factory):
    """A 3-block Llama (4 query / 2 KV heads) with all-MiniLM-L6-v2's tokenizer, so real text tokenizes."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trimtune.models import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=tokenizer.vocab_size, max_position_embeddings=64, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("llm") / "gqa-llama"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def shrink_args(model, text, out, *extra):
    return ["shrink", "--model", str(model), "--calib", str(text), "--nsamples", "4", "--seqlen", "32", "--out", str(out), *extra]


def test_shrink_then_evaluate_then_recover_by_distillation(gqa_llama, text_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    small = tmp_path / "small"
    code = main(shrink_args(gqa_llama, text_file, small, "--heads", "0.5", "--ffn", "0.25", "--hidden", "0.25", "--drop-layers", "1", "--speed"))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    result = json.loads(printed.out.split("result: ")[1])
    assert result["after"] == {"num_hidden_layers": 2, "hidden_size": 24, "num_attention_heads": 2, "num_key_value_heads": 1,
                               "head_dim": 8, "intermediate_size": 48}
    assert "shrinking blocks" in printed.err  # a progress bar per block
    assert "heads removed" in printed.out  # the per-block table
    report = json.loads((small / "shrink_report.json").read_text())
    assert report["file_bytes"]["after"] < report["file_bytes"]["before"]
    assert report["parameters_after"]["macs_per_token"] < report["parameters_before"]["macs_per_token"]
    assert report["speed"]["shrunk"]["decode_tokens_per_s"] > 0 and report["speed"]["dense"]["prefill_tokens_per_s"] > 0
    model = AutoModelForCausalLM.from_pretrained(small)  # a plain directory: transformers alone loads it
    assert model.config.num_hidden_layers == 2 and (small / "tokenizer.json").is_file()
    assert main(["eval", "--model", str(small), "--perplexity", str(text_file), "--seqlen", "32"]) == 0
    shrunk_ppl = json.loads(capsys.readouterr().out.split("perplexity: ")[1])["perplexity"]
    assert shrunk_ppl > 0

    recipe = {"model": {"path": str(small), "task": "causal-lm"},
              "data": {"train": str(LM_TEXTS), "eval_fraction": 0.34, "batch_size": 2, "max_length": 32},
              "method": {"type": "lora", "r": 2, "targets": "q_proj|v_proj"}, "train": {"max_steps": 2, "lr": 1e-3},
              "distill": {"alpha": 1.0}}
    (tmp_path / "recover.yaml").write_text(yaml.safe_dump(recipe))
    code = main(["tune", str(tmp_path / "recover.yaml"), "--out", str(tmp_path / "recovered"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "recovered" / "summary.json").read_text())
    dense = AutoModelForCausalLM.from_pretrained(gqa_llama)
    assert summary["teacher"]["loss"] != pytest.approx(summary["before"]["loss"])  # the dense directory teaches
    assert dense.config.num_hidden_layers == 3


@pytest.mark.parametrize("extra, message", [
    (["--heads", "1.0"], "must be a fraction in [0, 1)"),
    (["--heads", "0.9"], "would leave none"),
    (["--drop-layers", "3"], "every one of the model's 3 blocks"),
    (["--ffn", "0.5", "--gqa", "query", "--heads", "0.75"], "would leave none"),
    ([], "nothing to remove"),
    (["--ffn", "0.5", "--calib", "SHORT"], "fewer than seqlen=32"),
    (["--ffn", "0.5", "--overwrite"], "--overwrite is not taken with --model"),
])
def test_bad_input_is_refused_before_anything_is_written(gqa_llama, text_file, tmp_path, capsys, extra, message):
    (tmp_path / "SHORT").write_text("three short words")
    args = shrink_args(gqa_llama, text_file, tmp_path / "out") + [str(tmp_path / e) if e == "SHORT" else e for e in extra]
    listing = sorted(p.name for p in gqa_llama.iterdir())
    assert main(args) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in gqa_llama.iterdir()) == listing


def test_out_inside_the_input_is_refused(gqa_llama, text_file, capsys):
    assert main(shrink_args(gqa_llama, text_file, gqa_llama / "small", "--ffn", "0.5")) == 1
    assert "is, or is inside, the input model directory" in capsys.readouterr().err
    assert not (gqa_llama / "small").exists()


def test_an_unknown_architecture_is_refused(tmp_path, text_file, capsys):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)).save_pretrained(tmp_path / "bert")
    assert main(shrink_args(tmp_path / "bert", text_file, tmp_path / "out", "--ffn", "0.5")) == 2
    assert "does not know the decoder layout of model_type 'bert'" in capsys.readouterr().err


def test_a_teacher_with_another_vocabulary_is_refused(gqa_llama, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from trimtune.training import Distiller

    student = AutoModelForCausalLM.from_pretrained(gqa_llama)
    other = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=50))
    with pytest.raises(ValueError, match="vocabulary has 50 tokens"):
        Distiller(student, other)


def test_the_same_shrink_as_a_recipe(gqa_llama, text_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    recipe = tmp_path / "shrink.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(gqa_llama), "task": "causal-lm"},
        "shrink": {"ffn": 0.5, "drop_layers": 1, "calib": str(text_file), "nsamples": 4, "seqlen": 32},
        "output": str(tmp_path / "from_recipe"),
    }))
    assert main(["shrink", str(recipe), "--quiet"]) == 0
    flags = tmp_path / "from_flags"
    assert main(shrink_args(gqa_llama, text_file, flags, "--ffn", "0.5", "--drop-layers", "1", "--quiet")) == 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "from_recipe").state_dict()
    b = AutoModelForCausalLM.from_pretrained(flags).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the recipe is exactly the flags
    capsys.readouterr()
    recipe.write_text(yaml.safe_dump({"model": {"path": str(gqa_llama)}, "shrink": {"ffn": 1.5, "calib": str(text_file)}}))
    assert main(["shrink", str(recipe), "--out", str(tmp_path / "bad")]) == 2
    assert "ffn must be a fraction in [0, 1)" in capsys.readouterr().err


def test_a_recipe_shrink_section_holds_exactly_the_command_line_fields():
    from trimtune.commands.llm_shrink import SHRINK_FIELDS
    from trimtune.recipes.schema import ShrinkSection

    assert set(SHRINK_FIELDS) == set(ShrinkSection.model_fields)
