"""`trimtune prune --model DIR --calib SOURCE` with a JSONL/CSV of texts (one sample each) or `self`
(windows sampled from the model), and the recipe's oneshot.calib: each equals the library call on the
samples it stands for, and bad calibration input is refused before anything is written."""

import csv
import re
import json

import pytest
import torch

from test_llm_prune_cli import llama_dir, text_file  # noqa: F401  (fixtures)
from trimtune.cli import main
from trimtune.prune.sequential import SequentialConfig, prune_directory
from trimtune.prune.sequential.self_calib import self_generated_samples

TEXTS = ["the soup was cold and the waiter never came back", "great bread",
         "we waited an hour for a table, then the kitchen closed before our order; " * 3, "fine service, bland food"]


def weights(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory).state_dict()


def assert_same_model(a, b):
    a, b = weights(a), weights(b)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def prune_cli(model, calib, out, *extra):
    return main(["prune", "--model", str(model), "--method", "sparsegpt", "--sparsity", "0.5", "--calib", str(calib),
                 "--seqlen", "24", "--blocksize", "16", "--out", str(out), *extra])


def summary(printed):
    return json.loads(printed.split("calibration: ")[1].splitlines()[0])


def test_jsonl_takes_each_text_as_one_sample(llama_dir, tmp_path, capsys):  # noqa: F811
    from transformers import AutoTokenizer

    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    assert prune_cli(llama_dir, data, tmp_path / "cli", "--nsamples", "8", "--quiet") == 0
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    assert len({len(i) for i in ids}) == len(TEXTS) and max(len(i) for i in ids) > 24  # different lengths, one cut
    got = summary(capsys.readouterr().out)
    assert got["samples"] == 4 and got["truncated"] == 1 and got["tokens"] == sum(min(len(i), 24) for i in ids)
    by_hand = [torch.tensor(i[:24]) for i in ids]
    prune_directory(llama_dir, tmp_path / "api", by_hand, SequentialConfig("sparsegpt", 0.5, blocksize=16))
    assert_same_model(tmp_path / "cli", tmp_path / "api")


def test_csv_records_and_a_seeded_choice_of_nsamples(llama_dir, tmp_path, capsys):  # noqa: F811
    data = tmp_path / "calib.csv"
    with data.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "text"])
        writer.writeheader()
        writer.writerows({"label": i, "text": t} for i, t in enumerate(TEXTS * 3))
    assert prune_cli(llama_dir, data, tmp_path / "a", "--nsamples", "5", "--quiet") == 0
    got = summary(capsys.readouterr().out)
    assert got["records"] == 12 and got["samples"] == 5


def test_self_calibration_equals_the_library_call(llama_dir, tmp_path, capsys):  # noqa: F811
    from transformers import AutoModelForCausalLM

    assert prune_cli(llama_dir, "self", tmp_path / "cli", "--nsamples", "3", "--seed", "4", "--quiet") == 0
    assert summary(capsys.readouterr().out)["source"] == "self"
    samples = self_generated_samples(AutoModelForCausalLM.from_pretrained(llama_dir), 3, 24, seed=4)
    prune_directory(llama_dir, tmp_path / "api", samples, SequentialConfig("sparsegpt", 0.5, blocksize=16))
    assert_same_model(tmp_path / "cli", tmp_path / "api")


def test_self_generated_windows_are_seeded_model_text(tiny_llama):
    a = self_generated_samples(tiny_llama, 5, 20, seed=1, batch_size=2)
    assert a.shape == (5, 20) and a.dtype == torch.long
    assert torch.equal(a, self_generated_samples(tiny_llama, 5, 20, seed=1, batch_size=2))
    assert not torch.equal(a, self_generated_samples(tiny_llama, 5, 20, seed=2, batch_size=2))
    assert (a[:, 0] == tiny_llama.config.bos_token_id).all() and len(set(a[:, 1].tolist())) > 1  # BOS, then a random token
    assert not (a[:, 1:] == tiny_llama.config.eos_token_id).any()
    # top_k=1 after the random start is greedy: each token is the model's argmax given the window so far
    greedy = self_generated_samples(tiny_llama, 2, 12, seed=3, top_k=1)
    with torch.no_grad():
        logits = tiny_llama(input_ids=greedy).logits
    logits[..., tiny_llama.config.eos_token_id] = float("-inf")
    assert torch.equal(logits[:, 1:-1].argmax(-1), greedy[:, 2:])


def test_self_needs_a_model_that_generates(tiny_llama):
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50))
    with pytest.raises(ValueError, match="needs a causal language model that generates; BertForMaskedLM does not"):
        self_generated_samples(bert, 2, 8)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        self_generated_samples(tiny_llama, 2, 8, temperature=0)


def test_recipe_oneshot_calib_takes_jsonl_and_self(llama_dir, tmp_path, capsys):  # noqa: F811
    import yaml

    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    for calib, name in ((str(data), "jsonl"), ("self", "self")):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump({"model": {"path": str(llama_dir), "task": "causal-lm"}, "output": str(tmp_path / f"r-{name}"),
                                          "oneshot": {"calib": calib, "nsamples": 3, "seqlen": 24, "blocksize": 16, "batch_tokens": 30}}))
        assert main(["prune", str(recipe), "--quiet"]) == 0, capsys.readouterr().err
        assert summary(capsys.readouterr().out)["source"] == calib
    assert prune_cli(llama_dir, data, tmp_path / "flags", "--nsamples", "3", "--batch-tokens", "30", "--quiet") == 0
    assert_same_model(tmp_path / "r-jsonl", tmp_path / "flags")


@pytest.mark.parametrize("content,suffix,message", [
    ('{"text": "fine"}\n\n{"body": "no text here"}\n', ".jsonl", r"calib.jsonl, line 3: no \['text'\]"),
    ('{"body": "no text here"}\n', ".jsonl", r"has no column \['text'\]; its columns are \['body'\]; each record's 'text' field is one"),
    ('{"text": "fine"}\n{"text": "   "}\n', ".jsonl", r"calib.jsonl, line 2: 'text' is empty"),
    ("label,text\n1,good\n2,\n", ".csv", r"calib.csv, line 3: .*'text'"),
    ("some words", ".md", "has 2 tokens, fewer than seqlen=24"),  # any other suffix is plain text, as before
    ("", ".jsonl", "holds no records"),
    ("too short", ".txt", "fewer than seqlen=24"),
])
def test_bad_calibration_files_write_nothing(llama_dir, tmp_path, capsys, content, suffix, message):  # noqa: F811
    data = tmp_path / f"calib{suffix}"
    data.write_text(content)
    assert prune_cli(llama_dir, data, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_existing_out_is_refused_before_generating(llama_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    import trimtune.data.calibration as calibration

    monkeypatch.setattr(calibration, "_self_generated", lambda *a: pytest.fail("generated before checking --out"))
    (tmp_path / "out").mkdir()
    assert prune_cli(llama_dir, "self", tmp_path / "out") == 1
    assert "already exists" in capsys.readouterr().err
