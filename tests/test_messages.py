"""Each bad input gets a message naming the problem, the file or field, and what is allowed."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import trimtune as tt
from trimtune import cli
from trimtune.prune import PruneConfig, Wanda, collect_input_norms, collect_taylor, prune

SRC = str(Path(__file__).resolve().parents[1] / "src")


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def test_taylor_refuses_a_loss_without_gradients_or_not_from_the_weights():
    net, batches = mlp(), [torch.randn(4, 8)]
    with pytest.raises(ValueError, match="scalar loss tensor computed with gradients .*torch.no_grad"):
        collect_taylor(net, batches, lambda m, b: m(b).sum().detach())
    with pytest.raises(ValueError, match=r"does not depend on the weights of \['0'\]"):
        collect_taylor(net, batches, lambda m, b: (m[2](torch.ones(4, 8))).sum(), targets=["0", "2"])


def test_wanda_norms_of_the_wrong_shape_are_named():
    net = mlp()
    norms = collect_input_norms(net, [torch.randn(4, 8)], targets=["0"])
    with pytest.raises(ValueError, match="input norms for 0 have shape \\(3,\\), but the layer has 8 input channels"):
        prune(net, PruneConfig(importance=Wanda({"0": norms["0"][:3]}), targets=["0"]))


def run_cli(tmp_path, command: str, recipe: dict | str, *extra) -> tuple[int, str]:
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([command, str(path), "--out", str(tmp_path / "out"), "--quiet", *extra])
    return code, err.getvalue()


BASE = {"model": {"path": "minilm"}, "data": {"train": "demo", "limit": 40}, "train": {"epochs": 1}}


@pytest.mark.parametrize("sections, message", [
    ({"method": {"type": "lora"}, "train": {"lr": float("inf")}}, "train.lr = inf: Input should be a finite number"),
    ({"method": {"type": "adalora", "total_step": 5, "tinit": 10}}, "method: the budget schedule is empty: tinit (10)"),
    ({"prune": {"sparsity": 1.0}}, "prune.sparsity must be a number in [0, 1), got 1.0"),
])
def test_recipe_values_are_named_by_their_recipe_key(tmp_path, sections, message):
    command = "prune" if "prune" in sections else "tune"
    code, err = run_cli(tmp_path, command, {**BASE, **sections})
    assert code == 2 and message in err, err


def test_unquoted_n_m_in_yaml_says_to_quote_it(tmp_path):
    code, err = run_cli(tmp_path, "prune", "model: {path: minilm}\ndata: {train: demo}\nprune: {granularity: 2:4}\n")
    assert code == 2 and 'prune.granularity 124 is how YAML reads an unquoted 2:4' in err and 'granularity: "2:4"' in err


def test_prompt_text_init_takes_the_models_tokenizer_and_names_a_missing_one(tmp_path):
    recipe = {**BASE, "method": {"type": "prompt", "num_virtual_tokens": 4, "init": "TEXT", "init_text": "good bad"}}
    from trimtune.models import minilm_path
    from trimtune.recipes.schema import Recipe

    config = Recipe.model_validate(recipe).method.build(Recipe.model_validate(recipe).model)
    assert config.tokenizer == str(minilm_path())  # no method.tokenizer needed
    recipe["method"]["tokenizer"] = "/nowhere/tokenizer"
    code, err = run_cli(tmp_path, "tune", recipe)
    assert code == 2 and "tokenizer '/nowhere/tokenizer' does not exist" in err, err


def test_a_jsonl_record_without_a_label_names_file_and_line(tmp_path):
    data = tmp_path / "reviews.jsonl"
    data.write_text('{"text": "good", "label": "pos"}\n\n{"text": "bad"}\n')
    code, err = run_cli(tmp_path, "tune", {**BASE, "data": {"train": str(data)}, "method": {"type": "lora"}})
    assert code == 1 and f"data file {data}, line 3: no ['label']" in err, err


def test_the_nan_hint_names_the_recipe_key():
    net = mlp()
    with pytest.raises(tt.NonFiniteLossError, match=r"train.clip_norm"):
        tt.train(net, [(torch.full((2, 8), float("nan")), torch.tensor([0, 1]))], max_steps=1, progress=False,
                 loss_fn=nn.functional.cross_entropy)


def test_targets_that_match_nothing_list_every_layer_position(tiny_bert):
    with pytest.raises(tt.TargetError) as err:
        tt.apply(tiny_bert, tt.LoraConfig(targets="nonexistent"))
    message = str(err.value)
    assert "encoder.layer.N.intermediate.dense" in message and "encoder.layer.N.output.dense" in message
    assert "encoder.layer.N.attention.output.dense" in message


def test_merge_with_nothing_to_merge_says_so(tiny_bert):
    with pytest.warns(UserWarning, match="nothing to merge"):
        tt.merge(tiny_bert)


def test_damaged_safetensors_files_are_named(tiny_llama, tmp_path):
    tt.shrink(tiny_llama, 0.5, structures=("ffn",))
    tt.save_shrunk(tiny_llama, tmp_path / "small")
    weights = next((tmp_path / "small").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{weights.name} is not a readable shrunk model's weights file"):
        tt.load_shrunk(tmp_path / "small")


def test_a_pickle_only_model_directory_is_refused_with_trimtunes_message(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    (model / "pytorch_model.bin").write_bytes(b"not loaded")
    code, err = run_cli(tmp_path, "tune", {**BASE, "model": {"path": str(model)}, "method": {"type": "lora"}})
    assert code == 1 and "holds only PyTorch pickle weights (pytorch_model.bin)" in err and "weights_only" not in err


def test_loading_minilm_prints_no_load_report_or_progress_bar():
    code = "from trimtune.models import minilm_classifier; minilm_classifier(2)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOAD REPORT" not in result.stderr + result.stdout and "Loading weights" not in result.stderr


def test_the_cli_can_skip_the_base_check(tmp_path):
    parser = cli.build_parser()
    for command in ("eval", "merge", "export", "shrink"):
        extra = ["--out", "x"] if command != "eval" else []
        extra += ["--ratio", "0.5"] if command == "shrink" else []
        args = parser.parse_args([command, str(tmp_path), *extra, "--no-check-base"])
        assert args.check_base is False
