"""Every `trimtune` subcommand end to end on tiny settings (MiniLM, a tiny random Llama saved to
disk, the digits CNN), and each bad input: exit code and one clear line. Subprocesses where the
process boundary matters (the installed entry point, exit codes); the rest in process, for time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import run_trimtune

from trimtune import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICK = ["--set", "data.limit=24", "--set", "train.epochs=1", "--set", "data.max_length=32", "--quiet"]


def main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def result_line(out: str, title: str) -> dict:
    line = next(l for l in out.splitlines() if l.startswith(f"{title}: "))
    return json.loads(line.split(": ", 1)[1])


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama saved with save_pretrained, with MiniLM's tokenizer (so texts tokenise)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trimtune.models import minilm_path

    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=30522, max_position_embeddings=128, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return path


def test_minilm_lora_tune_eval_merge(tmp_path):
    run = tmp_path / "lora"
    # the model's own HF head, so the merged model is a plain transformers directory
    result = run_trimtune("tune", EXAMPLES / "lora_minilm.yaml", "--out", run, *QUICK, "--set", "model.pooling=model")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert result_line(result.stdout, "result")["after"] == summary["after"]
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "recipe.yaml").is_file()
    assert yaml.safe_load((run / "recipe.yaml").read_text())["data"]["limit"] == 24  # the resolved recipe
    assert len(json.loads((run / "metrics.json").read_text())["losses"]) == 2  # 19 train records, batch 16

    merged = tmp_path / "merged"
    result = run_trimtune("merge", run, "--out", merged, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"saved: {merged}" and result.stderr == ""  # --quiet: nothing else

    from transformers import AutoModelForSequenceClassification

    from trimtune.recipes import load_run

    loaded = load_run(run)
    plain = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    batch = next(iter(loaded.loaders().eval))
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, loaded.model(**batch).logits, atol=1e-5, rtol=1e-4)
    assert plain.config.id2label == dict(enumerate(summary["labels"]))


def test_eval_export_report_in_process(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(capsys, "tune", EXAMPLES / "lora_minilm.yaml", "--out", run, *QUICK)[0] == 0
    code, out, _ = main(capsys, "eval", run, "--quiet")
    assert code == 0 and result_line(out, "eval") == json.loads((run / "summary.json").read_text())["after"]
    code, _, _ = main(capsys, "export", run, "--out", tmp_path / "m.safetensors", "--format", "safetensors", "--dtype", "float16", "--quiet")
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "m.safetensors")
    assert code == 0 and all(t.dtype == torch.float16 for t in tensors.values())
    assert "classifier.weight" in tensors and not any("lora" in k or "deltas" in k for k in tensors)
    code, out, err = main(capsys, "export", run, "--out", tmp_path / "m.safetensors", "--format", "safetensors")
    assert code == 1 and "already exists; pass --overwrite" in err
    code, out, _ = main(capsys, "report", run, "--format", "both")
    report = tmp_path / "run" / "report"
    assert code == 0 and result_line(out, "report")["plots"] == ["loss.png"]
    assert "![Loss curve](loss.png)" in (report / "report.md").read_text()
    assert "<img src='loss.png'" in (report / "report.html").read_text()
    assert (report / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((report / "report.json").read_text())["summary"]["labels"]


def test_mean_pooling_recipe_trains_and_exports_the_mean_pool_head(tmp_path, capsys):
    from safetensors.torch import load_file

    from trimtune.models import MeanPoolClassifier, mean_pool_classifier, minilm_path
    from trimtune.recipes import load_run

    run = tmp_path / "run"
    assert main(capsys, "tune", EXAMPLES / "lora_minilm.yaml", "--out", run, *QUICK)[0] == 0  # pooling: mean
    loaded = load_run(run)
    labels = json.loads((run / "summary.json").read_text())["labels"]
    assert isinstance(loaded.model, MeanPoolClassifier) and loaded.model.config.id2label == dict(enumerate(labels))
    # hf is asked for, but a mean-pool head is no transformers class: one state-dict file instead
    assert main(capsys, "merge", run, "--out", tmp_path / "merged", "--quiet")[0] == 0
    plain = mean_pool_classifier(minilm_path(), len(labels))
    plain.load_state_dict(load_file(tmp_path / "merged" / "model.safetensors"))
    batch = {k: v for k, v in next(iter(loaded.loaders().eval)).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, loaded.model.eval()(**batch).logits, atol=1e-5, rtol=1e-4)


def test_pruned_lora_with_follow_mask_merges_to_the_trained_sparse_model(tmp_path, capsys):
    from safetensors.torch import load_file

    from trimtune.models import mean_pool_classifier, minilm_path
    from trimtune.recipes import load_run

    run = tmp_path / "run"  # Wanda 2:4, then LoRA with follow_mask: true
    assert main(capsys, "tune", EXAMPLES / "prune_lora_minilm.yaml", "--out", run, *QUICK)[0] == 0
    loaded = load_run(run)
    assert main(capsys, "merge", run, "--out", tmp_path / "merged", "--quiet")[0] == 0  # sparse merge (no --dense)
    plain = mean_pool_classifier(minilm_path(), len(json.loads((run / "summary.json").read_text())["labels"]))
    plain.load_state_dict(load_file(tmp_path / "merged" / "model.safetensors"))
    batch = {k: v for k, v in next(iter(loaded.loaders().eval)).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, loaded.model.eval()(**batch).logits, atol=1e-5, rtol=1e-4)
    query = plain.encoder.encoder.layer[0].attention.self.query.weight
    assert bool((query.view(-1, 4) != 0).sum(1).le(2).all())  # still 2:4 after merging LoRA


def test_digits_prune_shrink_report(tmp_path, capsys):
    run, small = tmp_path / "pruned", tmp_path / "small"
    result = run_trimtune("prune", EXAMPLES / "prune_digits.yaml", "--out", run, "--set", "train.epochs=2", "--set", "data.limit=400", "--quiet")
    assert result.returncode == 0, result.stderr
    sparsity = json.loads((run / "sparsity.json").read_text())
    by_layer = {layer["name"]: layer for layer in sparsity["layers"]}
    assert set(by_layer) == {"conv1", "conv2", "fc1"}  # the recipe's targets; fc2 untouched
    assert all(abs(layer["sparsity"] - 0.7) < 0.05 for layer in by_layer.values())
    assert len(by_layer["fc1"]["zero_out"]) == round(0.7 * 64)  # whole output units ("out" granularity)
    result = run_trimtune("shrink", run, "--ratio", "0.5", "--out", small, "--quiet")
    assert result.returncode == 0, result.stderr
    figures = result_line(result.stdout, "shrink")
    assert figures["params"][1] < 0.5 * figures["params"][0]
    assert (small / "model" / "shrink_history.json").is_file()
    story = json.loads((run / "prune_story.json").read_text())  # timing "after": dense phase, ramp, recovery
    assert 0 < story["begin"] < story["end"] < 14 and story["dense"]["step"] == story["begin"] - 1
    assert story["pruned"]["step"] == story["end"]
    trace = [s for _, s in story["sparsity_trace"]]
    assert trace[story["begin"] - 1] == 0 and trace == sorted(trace) and trace[-1] > 0.65  # the ramp, never un-pruned
    assert story["size"]["shrunk"]["macs_after"] < 0.5 * story["size"]["shrunk"]["macs_before"]  # whole units: real MACs
    for run_dir, plots in ((run, ["accuracy.png", "timeline.png", "size.png", "loss.png", "sparsity.png"]), (small, ["shrink.png"])):
        code, out, _ = main(capsys, "report", run_dir)
        assert code == 0 and result_line(out, "report")["plots"] == plots
    assert "| params |" in (small / "report" / "report.md").read_text()
    report = (run / "report" / "report.md").read_text()
    assert f"| dense | {100 * story['dense']['accuracy']:.2f} % | step {story['begin'] - 1}, before pruning began |" in report
    assert "| fc1 | 64×128 | 70.3 % | 45 of 64 |" in report


def test_llama_prompt_and_qlora(tmp_path, capsys, llama_dir):
    run = tmp_path / "prompt"
    code, out, err = main(capsys, "tune", EXAMPLES / "prompt_llama.yaml", "--set", f"model.path={llama_dir}", "--set", "train.epochs=1", "--out", run, "--quiet")
    assert code == 0, err
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    code, out, err = main(capsys, "eval", run, "--quiet")
    assert code == 0 and result_line(out, "eval") == json.loads((run / "summary.json").read_text())["after"]
    code, _, err = main(capsys, "merge", run, "--out", tmp_path / "m")
    assert code == 1 and "cannot be merged" in err and len(err.strip().splitlines()) == 1
    run = tmp_path / "qlora"
    code, out, err = main(capsys, "tune", EXAMPLES / "qlora_llama.yaml", "--set", f"model.path={llama_dir}", "--out", run, "--quiet")
    assert code == 0, err
    code, out, _ = main(capsys, "eval", run, "--quiet")  # rebuilt on a 4-bit base, as trained
    assert code == 0 and result_line(out, "eval") == json.loads((run / "summary.json").read_text())["after"]


def test_diff_and_adalora_runs(tmp_path, capsys):
    run = tmp_path / "diff"
    code, out, err = main(capsys, "diff", EXAMPLES / "diff_minilm.yaml", "--out", run, *QUICK)
    assert code == 0, err
    kept = json.loads((run / "summary.json").read_text())["diff"]
    assert kept["kept"] == max(1, round(0.005 * kept["total"]))
    assert (run / "diff" / "diff_config.json").is_file()
    code, out, _ = main(capsys, "eval", run, "--quiet")
    assert code == 0 and result_line(out, "eval") == json.loads((run / "summary.json").read_text())["after"]
    run = tmp_path / "adalora"
    code, _, err = main(capsys, "tune", EXAMPLES / "adalora_minilm.yaml", "--out", run, *QUICK, "--set", "method.tinit=0", "--set", "method.tfinal=0")
    assert code == 0, err
    ranks = json.loads((run / "adalora_ranks.json").read_text())
    assert ranks and all(0 <= r <= 8 for r in ranks.values())
    assert main(capsys, "report", run)[0] == 0 and (run / "report" / "adalora_ranks.png").is_file()


def test_every_subcommand_has_help(capsys):
    for command in ("demo", "tune", "prune", "diff", "shrink", "merge", "eval", "report", "export"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert "--quiet" in capsys.readouterr().out


# --- bad input: one line, the right exit code, no traceback -------------------------------------

def write_recipe(tmp_path, **sections) -> Path:
    raw = {"model": {"path": "minilm"}, "data": {"train": "demo", "limit": 8}, "method": {"type": "lora"}, **sections}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("sections, code, message", [
    ({"model": {"path": "/nowhere/model"}}, 1, "model path /nowhere/model does not exist; model.path must be a local Hugging Face model directory"),
    ({"data": {"train": "DATA/empty.csv"}}, 1, "holds no records"),
    ({"data": {"train": "DATA/cols.csv"}}, 1, "has no column ['text']; its columns are ['label', 'sentence']"),
    ({"data": {"train": "DATA/nothing.csv"}}, 1, "data path DATA/nothing.csv does not exist"),
    ({"trainn": {"epochs": 1}}, 2, "unknown key trainn (did you mean 'train'?)"),
    ({"train": {"epochs": -1}}, 2, "train.epochs = -1: Input should be greater than or equal to 0"),
    ({"method": {"type": "lora", "alpah": 4}}, 2, "unknown key method.alpah for lora (did you mean 'alpha'?)"),
])
def test_bad_input_is_one_line_with_exit_code(tmp_path, capsys, sections, code, message):
    (tmp_path / "empty.csv").write_text("text,label\n")
    (tmp_path / "cols.csv").write_text("sentence,label\nhi,a\n")
    sections = json.loads(json.dumps(sections).replace("DATA", str(tmp_path)))
    message = message.replace("DATA", str(tmp_path))
    got, out, err = main(capsys, "tune", write_recipe(tmp_path, **sections), "--out", tmp_path / "run")
    assert got == code
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_model_dir_without_config(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    got, _, err = main(capsys, "tune", write_recipe(tmp_path, model={"path": str(tmp_path / "model")}), "--out", tmp_path / "run")
    assert got == 1 and "has no config.json, so it is not a Hugging Face model directory" in err


def test_existing_run_dir_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    recipe = write_recipe(tmp_path, model={"path": "/nowhere"})
    got, _, err = main(capsys, "tune", recipe, "--out", out)
    assert got == 1 and str(out) in err and "already exists; pass --overwrite" in err
    got, _, err = main(capsys, "tune", recipe, "--out", out, "--overwrite")
    assert got == 1 and "was not written by trimtune" in err and (out / "notes.txt").is_file()


def test_usage_errors_exit_2(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    assert main(capsys, "tune", recipe, "--set", "train.lr")[0] == 2
    got, _, err = main(capsys, "diff", recipe, "--out", tmp_path / "r")
    assert got == 2 and "`trimtune diff` needs method.type: diff" in err
    got, _, err = main(capsys, "prune", recipe, "--out", tmp_path / "r")
    assert got == 2 and "needs a `prune:` section" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["shrink", str(tmp_path), "--ratio", "1.5", "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2 and "must be a number in (0, 1), got '1.5'" in capsys.readouterr().err
    got, _, err = main(capsys, "eval", tmp_path)
    assert got == 1 and "is not a trimtune run directory" in err
    got, _, err = main(capsys, "report", tmp_path)
    assert got == 1 and "holds none of" in err
    (tmp_path / "trimtune_run.json").write_text("{}")  # a run that never finished
    got, _, err = main(capsys, "eval", tmp_path)
    assert got == 1 and "did not finish (no summary.json)" in err
