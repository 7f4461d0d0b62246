"""`trimtune export --format onnx`, checked by onnxruntime: an encoder with its classification head
(a Hugging Face directory, a LoRA run merged on export, that run shrunk) and the digits CNN pruned and
shrunk; outputs within 1e-4 of PyTorch's at batch and sequence sizes other than the traced ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import trimtune as tt
from trimtune.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A BERT classifier at test size with all-MiniLM-L6-v2's tokenizer (the model's own HF head)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from trimtune.models import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=tokenizer.vocab_size, max_position_embeddings=64, num_labels=2)
    path = tmp_path_factory.mktemp("onnx") / "bert"
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def export(source, out, *extra):
    assert main(["export", str(source), "--format", "onnx", "--out", str(out), "--quiet", *extra]) == 0
    return out


def other_text_batch(tokenizer) -> dict:
    """Three rows, padded, longer than the traced example: the axes must be dynamic."""
    texts = ["Fine.", "The soup was hot and full of flavour, and the bread was fresh.", "Our waiter forgot the order twice."]
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def test_encoder_directory_with_dynamic_batch_and_sequence(bert_dir, tmp_path, capsys):
    import onnxruntime
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = export(bert_dir, tmp_path / "bert.onnx")
    assert json.loads(capsys.readouterr().out.split("export: ")[1])["onnxruntime_max_abs_diff"] < 1e-4
    inputs = {i.name: i.shape for i in onnxruntime.InferenceSession(str(path)).get_inputs()}
    assert inputs == {name: ["batch", "sequence"] for name in ("input_ids", "token_type_ids", "attention_mask")}
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir).eval()
    assert tt.onnxruntime_difference(path, model, other_text_batch(AutoTokenizer.from_pretrained(bert_dir))) < 1e-4


def test_lora_run_merged_then_shrunk(bert_dir, tmp_path, capsys):
    from trimtune.recipes.rebuild import load_run, load_run_or_shrink

    recipe = {"model": {"path": str(bert_dir), "task": "classification", "pooling": "model"},
              "data": {"train": str(EXAMPLES / "data" / "reviews.csv"), "eval_fraction": 0.3, "batch_size": 8, "max_length": 32},
              "method": {"type": "lora", "r": 4, "targets": "query|value", "modules_to_save": ["classifier"]},
              "train": {"max_steps": 3, "lr": 1e-2}}
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(recipe))
    run, small = tmp_path / "lora", tmp_path / "small"
    assert main(["tune", str(tmp_path / "lora.yaml"), "--out", str(run), "--quiet"]) == 0
    assert main(["shrink", str(run), "--ratio", "0.5", "--out", str(small), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 1
    assert "pass --merge" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    for source, load in ((run, load_run), (small, load_run_or_shrink)):
        path = export(source, tmp_path / f"{source.name}.onnx", "--merge")
        trained = load(source)  # adapter unmerged, as trained
        assert tt.onnxruntime_difference(path, trained.model, other_text_batch(trained.tokenizer)) < 1e-4
    assert (tmp_path / "small.onnx").stat().st_size < (tmp_path / "lora.onnx").stat().st_size


def test_pruned_and_shrunk_cnn(tmp_path, capsys):
    from trimtune.recipes.rebuild import load_run_or_shrink

    run, small = tmp_path / "pruned", tmp_path / "small"
    assert main(["prune", str(EXAMPLES / "prune_digits.yaml"), "--out", str(run), "--set", "train.epochs=1",
                 "--set", "data.limit=128", "--quiet"]) == 0
    assert main(["shrink", str(run), "--ratio", "0.5", "--out", str(small), "--quiet"]) == 0
    for source in (run, small):
        path = export(source, tmp_path / f"{source.name}.onnx")
        model = tt.unload(load_run_or_shrink(source).model).eval()  # masks folded in, as exported
        images = torch.rand(5, 1, 8, 8) * 16  # another batch size than the traced one
        assert tt.onnxruntime_difference(path, model, {"x": images}) < 1e-4


def test_a_file_onnxruntime_disagrees_with_is_not_written(bert_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tt, "onnxruntime_difference", lambda path, model, inputs: 0.5)  # as if the runtime computed otherwise
    assert main(["export", str(bert_dir), "--format", "onnx", "--out", str(tmp_path / "bert.onnx"), "--quiet"]) == 1
    assert "onnxruntime's outputs differ from PyTorch's by 5.00e-01" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no file, and no temporary one beside it
