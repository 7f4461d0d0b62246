"""Recipes and data files, in process: validation messages, overrides, the shipped examples, readers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from trimtune.data.files import read_records, split_records
from trimtune.data.lm import lm_loader
from trimtune.recipes import RecipeError, load_recipe, save_recipe
from trimtune.recipes.load import validate

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
BASE = {"model": {"path": "minilm"}, "data": {"train": "demo"}}


def with_(**sections) -> dict:
    return {**BASE, **sections}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_recipe_validates(path):
    recipe = load_recipe(path)
    if recipe.method is not None:
        recipe.method.build()  # the library config dataclass accepts it


def test_examples_cover_every_method_and_pruning():
    from trimtune.recipes.method_runs import recipe_methods as methods

    used = {yaml.safe_load(p.read_text()).get("method", {}).get("type") for p in EXAMPLES}
    assert set(methods()) <= used
    assert any("prune" in yaml.safe_load(p.read_text()) for p in EXAMPLES)


@pytest.mark.parametrize("raw, expected", [
    (with_(trian={"epochs": 1}), ["unknown key trian", "did you mean 'train'"]),
    (with_(data={"train": "demo", "eval_fracton": 0.1}), ["unknown key data.eval_fracton", "did you mean 'eval_fraction'", "allowed:"]),
    (with_(data={"train": "demo", "eval_fraction": 1.5}), ["data.eval_fraction = 1.5", "less than 1"]),
    (with_(train={"lr": -1}), ["train.lr = -1", "greater than 0"]),
    (with_(method={"type": "lorra"}), ["method.type must be one of", "'lora'", "did you mean 'lora'"]),
    (with_(method={"type": "lora", "rank": 4}), ["unknown key method.rank for lora", "allowed: ['r'"]),
    (with_(method={"type": "lora", "r": 0}), ["method.r must be an integer >= 1, got 0"]),
    (with_(prune={"granularity": "diagonal"}), ["prune.granularity must be one of", "'diagonal'"]),
    (with_(prune={"schedule": "cubic", "timing": "before"}), ["prune.timing='before'", "style must be 'one-shot'"]),
    (with_(model={"path": "lenet", "task": "image-classification"}), ["'image-classification' goes with data.train 'digits'"]),
    ({"data": {"train": "demo"}}, ["missing key model"]),
    (with_(model={"path": "minilm", "pooling": "cls"}), ["model.pooling", "'model'", "'mean'"]),
    (with_(model={"path": "minilm", "task": "causal-lm", "pooling": "mean"}), ["model.pooling 'mean' is a text-classification head"]),
])
def test_bad_recipes_name_field_value_and_what_is_allowed(raw, expected):
    with pytest.raises(RecipeError) as err:
        validate(raw)
    for phrase in expected:
        assert phrase in str(err.value)
    assert "\n" not in str(err.value)  # one paragraph


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(with_(method={"type": "lora"})))
    recipe = load_recipe(path, ["method.r=4", "train.lr=3e-4", "data.labels=[a, b]", "prune.sparsity=0.25"])
    assert recipe.method.build().r == 4 and recipe.train.lr == 3e-4 and recipe.data.labels == ["a", "b"]
    assert recipe.prune.sparsity == 0.25
    with pytest.raises(RecipeError, match="--set expects KEY.SUB=VALUE, got 'train.lr'"):
        load_recipe(path, ["train.lr"])
    with pytest.raises(RecipeError, match="unknown key train.lrr"):
        load_recipe(path, ["train.lrr=1"])


def test_resolved_recipe_round_trips(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(with_(method={"type": "lora", "r": 2})))
    recipe = load_recipe(path)
    saved = save_recipe(recipe, tmp_path)
    again = load_recipe(saved)
    assert again == recipe and again.train.epochs == 1  # defaults written out
    assert yaml.safe_load(saved.read_text())["method"] == {"type": "lora", "r": 2}


def test_recipe_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="must be a mapping of sections"):
        load_recipe(tmp_path / "list.yaml")


def test_readers_csv_jsonl_text_dir(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\nhello,a\nworld,b\n")
    (tmp_path / "d.jsonl").write_text('{"text": "hello", "label": "a"}\n\n{"text": "world", "label": "b"}\n')
    (tmp_path / "dir" / "a").mkdir(parents=True)
    (tmp_path / "dir" / "a" / "1.txt").write_text("hello")
    (tmp_path / "dir" / "b").mkdir()
    (tmp_path / "dir" / "b" / "2.txt").write_text("world")
    expected = [{"text": "hello", "label": "a"}, {"text": "world", "label": "b"}]
    for name in ("d.csv", "d.jsonl", "dir"):
        assert read_records(tmp_path / name, columns=("text", "label")) == expected
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "x.txt").write_text("just text")
    assert read_records(tmp_path / "lm") == [{"text": "just text"}]


def test_reader_errors_name_file_and_columns(tmp_path):
    (tmp_path / "d.csv").write_text("sentence,label\nhello,a\n")
    with pytest.raises(ValueError, match=r"has no column \['text'\]; its columns are \['label', 'sentence'\]"):
        read_records(tmp_path / "d.csv", columns=("text", "label"))
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(ValueError, match="holds no records"):
        read_records(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_records(tmp_path / "missing.csv")
    (tmp_path / "d.xlsx").write_text("")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_records(tmp_path / "d.xlsx")


def test_split_is_seeded_and_stratified():
    records = [{"text": str(i), "label": "ab"[i % 2]} for i in range(40)]
    train, held_out = split_records(records, 0.25, seed=3, stratify="label")
    again = split_records(records, 0.25, seed=3, stratify="label")
    assert (train, held_out) == again and len(held_out) == 10
    assert sorted(r["label"] for r in held_out) == ["a"] * 5 + ["b"] * 5
    assert {r["text"] for r in train} | {r["text"] for r in held_out} == {str(i) for i in range(40)}
    assert split_records(records, 0.25, seed=4, stratify="label")[1] != held_out


def test_lm_loader_masks_padding_in_labels(minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    batch = next(iter(lm_loader(["a short one", "a somewhat longer text than the first"], tokenizer, batch_size=2, max_length=6)))
    assert batch["input_ids"].shape == (2, 6)  # truncated to max_length
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == -100).all()
    assert torch.equal(batch["labels"][~pad], batch["input_ids"][~pad])
