"""Perplexity (sliding windows) and the `trimtune prune --model` / `trimtune eval --perplexity` verbs,
on a tiny random Llama that uses all-MiniLM-L6-v2's tokenizer (so a real text file tokenizes)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from trimtune.cli import main
from trimtune.training.perplexity import perplexity


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trimtune.models import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=tokenizer.vocab_size, max_position_embeddings=64, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("llm") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from trimtune.data import load_demo_texts

    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text("\n".join(r["text"] for r in load_demo_texts()))
    return path


def test_perplexity_scores_every_token_once(tiny_llama):
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (50,))
    with torch.no_grad():
        logits = tiny_llama(input_ids=ids[None]).logits[0, :-1]
    full = math.exp(float(F.cross_entropy(logits, ids[1:])))
    whole = perplexity(tiny_llama, ids, seqlen=64)
    assert whole["tokens"] == 49 and whole["perplexity"] == pytest.approx(full, rel=1e-5)
    disjoint = perplexity(tiny_llama, ids, seqlen=20)
    assert disjoint["tokens"] == 47 and disjoint["windows"] == 3  # each window's first token has no context
    sliding = perplexity(tiny_llama, ids, seqlen=20, stride=5)
    assert sliding["tokens"] == 49 and sliding["windows"] == 7
    with pytest.raises(ValueError, match="seqlen 200 is longer than the model's 128 positions"):
        perplexity(tiny_llama, ids, seqlen=200)


def test_cli_prune_then_perplexity(llama_dir, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(llama_dir), "--method", "sparsegpt", "--sparsity", "2:4", "--calib", str(text_file),
                 "--nsamples", "4", "--seqlen", "32", "--blocksize", "16", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    result = json.loads(printed.out.split("result: ")[1])
    assert result["sparsity"] == 0.5 and result["layers"] == 14
    assert "model.layers.1.mlp.down_proj" in printed.out  # the table
    assert "pruning blocks" in printed.err  # the progress bar
    assert json.loads((out / "sparsity_report.json").read_text())["total"]["sparsity"] == 0.5
    assert (out / "tokenizer.json").is_file()

    assert main(["eval", "--model", str(out), "--perplexity", str(text_file), "--seqlen", "32"]) == 0
    pruned = json.loads(capsys.readouterr().out.split("perplexity: ")[1])
    assert main(["eval", str(llama_dir), "--perplexity", str(text_file), "--seqlen", "32"]) == 0
    dense = json.loads(capsys.readouterr().out.split("perplexity: ")[1])
    assert pruned["tokens"] == dense["tokens"] > 100
    assert pruned["perplexity"] != dense["perplexity"]


def test_cli_magnitude_needs_no_calibration_file(llama_dir, tmp_path, capsys):
    assert main(["prune", "--model", str(llama_dir), "--method", "magnitude", "--out", str(tmp_path / "mag"), "--quiet"]) == 0
    assert json.loads((tmp_path / "mag" / "sparsity_report.json").read_text())["total"]["sparsity"] == 0.5
    capsys.readouterr()
    assert main(["prune", "--model", str(llama_dir), "--method", "wanda", "--out", str(tmp_path / "w")]) != 0
    assert "--calib FILE|self is required with --model --method wanda" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("extra,message", [
    (["--seqlen", "100"], "seqlen 100 is longer than the model's 64 positions"),
    (["--nsamples", "0"], "nsamples must be an integer >= 1"),
    (["--calib", "EMPTY"], "is empty"),
    (["--calib", "SHORT"], "has 3 tokens, fewer than seqlen=32"),
    (["--sparsity", "0.5:4"], "sparsity must be a fraction in [0, 1) or 'N:M'"),
    (["--sparsity", "3:2"], "0 < N < M"),
    (["--method", "magnitude", "--owl"], "owl needs calibration activations"),
    (["--method", "wanda", "--selection", "reference"], "selection 'reference' is SparseGPT's mask choice"),
])
def test_cli_bad_input_names_the_problem_and_writes_nothing(llama_dir, text_file, tmp_path, capsys, extra, message):
    (tmp_path / "EMPTY").write_text("  \n")
    (tmp_path / "SHORT").write_text("three short words")
    extra = [str(tmp_path / e) if e in ("EMPTY", "SHORT") else e for e in extra]
    args = ["prune", "--model", str(llama_dir), "--calib", str(text_file), "--nsamples", "2", "--seqlen", "32", "--out", str(tmp_path / "out")]
    code = main(args + extra)
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert not (tmp_path / "out").exists()


def test_recipe_form_still_required_without_model(capsys):
    assert main(["prune"]) == 2
    assert "needs a RECIPE (or, for prune, --model DIR)" in capsys.readouterr().err


def test_the_same_prune_as_a_recipe(llama_dir, text_file, tmp_path, capsys):
    import yaml
    from transformers import AutoModelForCausalLM

    recipe = tmp_path / "oneshot.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(llama_dir), "task": "causal-lm"},
        "oneshot": {"method": "wanda", "sparsity": "2:4", "calib": str(text_file), "nsamples": 4, "seqlen": 32},
        "output": str(tmp_path / "from_recipe"),
    }))
    assert main(["prune", str(recipe), "--quiet"]) == 0
    flags = tmp_path / "from_flags"
    assert main(["prune", "--model", str(llama_dir), "--method", "wanda", "--sparsity", "2:4", "--calib", str(text_file),
                 "--nsamples", "4", "--seqlen", "32", "--out", str(flags), "--quiet"]) == 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "from_recipe").state_dict()
    b = AutoModelForCausalLM.from_pretrained(flags).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the recipe is exactly the flags
    capsys.readouterr()
    recipe.write_text(f"model: {{path: {llama_dir}}}\noneshot: {{sparsity: 2:4, calib: {text_file}}}\ndata: {{train: demo}}\n")
    assert main(["prune", str(recipe), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert 'quote it: sparsity: "2:4"' in err
    recipe.write_text(f"model: {{path: {llama_dir}}}\noneshot: {{sparsity: '2:4', calib: {text_file}}}\ndata: {{train: demo}}\n")
    assert main(["prune", str(recipe), "--out", str(tmp_path / "bad")]) == 2
    assert "takes no ['data'] section" in capsys.readouterr().err



def test_tune_after_a_one_shot_prune_distills_from_the_dense_directory(llama_dir, tmp_path, capsys):
    """`trimtune prune --model` records the directory it pruned; a later `trimtune tune` with a distill
    section takes that dense model as its teacher, not the pruned model it starts from."""
    from pathlib import Path

    import yaml

    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(llama_dir), "--method", "magnitude", "--out", str(pruned), "--quiet"]) == 0
    assert json.loads((pruned / "pruned_from.json").read_text()) == {"source": str(llama_dir.resolve())}

    def tune(model_dir, name):
        recipe = {"model": {"path": str(model_dir), "task": "causal-lm"},
                  "data": {"train": str(Path(__file__).resolve().parents[1] / "examples" / "data" / "lm_texts"), "eval_fraction": 0.34,
                           "batch_size": 2, "max_length": 32},
                  "method": {"type": "lora", "r": 2, "targets": "q_proj|v_proj"}, "train": {"max_steps": 1, "lr": 1e-3}, "distill": {}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        code = main(["tune", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name), "--quiet"])
        assert code == 0, capsys.readouterr().err
        return json.loads((tmp_path / name / "summary.json").read_text())

    dense, recovered = tune(llama_dir, "dense"), tune(pruned, "recovered")
    assert dense["teacher"] == pytest.approx(dense["before"])  # a dense start teaches itself (a copy as loaded)
    assert recovered["teacher"] == pytest.approx(dense["before"])  # the pruned start learns from the dense directory
    assert recovered["before"]["loss"] != pytest.approx(dense["before"]["loss"])
    (tmp_path / "moved").mkdir()
    llama_dir.rename(tmp_path / "moved" / "llama")
    try:
        assert main(["tune", str(tmp_path / "recovered.yaml"), "--out", str(tmp_path / "again"), "--quiet"]) == 1
        assert "was pruned from" in capsys.readouterr().err and not (tmp_path / "again").exists()
    finally:
        (tmp_path / "moved" / "llama").rename(llama_dir)
