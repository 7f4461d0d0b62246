"""`trimtune tune` on instruction data (examples/sft_llama.yaml on a tiny random Llama with a chat
tokenizer, in process): packed prompt/completion pairs and chats train, the run reports what tokenising
cut and how packed examples are kept apart, eval reads the run back; bad data and bad settings are one
clear line before any step, with nothing left at --out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf_models import causal_lm_dir

from trimtune import cli
from trimtune.recipes import RecipeError
from trimtune.recipes.load import validate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICK = ["--set", "data.limit=12", "--set", "data.max_length=256", "--set", "data.batch_size=2", "--quiet"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return causal_lm_dir(tmp_path_factory.mktemp("sft") / "llama")


def main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sft_recipe_packs_trains_and_reports(tmp_path, capsys, llama_dir):
    run = tmp_path / "sft"
    code, _, err = main(capsys, "tune", EXAMPLES / "sft_llama.yaml", "--set", f"model.path={llama_dir}", "--out", run, *QUICK)
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    data = summary["data"]["train"]
    assert data["attention"] == "position_ids" and data["windows"] < data["kept"] and data["truncated"] == 0
    assert summary["steps"] == len(json.loads((run / "metrics.json").read_text())["losses"]) == -(-data["windows"] // 2)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    code, out, err = main(capsys, "eval", run, "--quiet")
    assert code == 0, err
    assert json.loads(out.split("eval: ", 1)[1].splitlines()[0]) == summary["after"]


def test_chat_data_with_a_cut_example_reports_it(tmp_path, capsys, llama_dir):
    chat = [{"role": "user", "content": "How was the food?"}, {"role": "assistant", "content": "Good."}]
    long_chat = [{"role": "user", "content": "Tell me everything. " * 20}, {"role": "assistant", "content": "No."}]
    rows = [{"messages": chat}] * 5 + [{"messages": long_chat}]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "chat"
    code, _, err = main(capsys, "tune", EXAMPLES / "sft_llama.yaml", "--set", f"model.path={llama_dir}", "--set", f"data.train={tmp_path / 'chats.jsonl'}",
                        "--set", "data.max_length=64", "--set", "data.packing=false", "--set", "data.eval_fraction=0", "--out", run, "--quiet")
    assert code == 0, err
    data = json.loads((run / "summary.json").read_text())["data"]["train"]
    assert (data["examples"], data["truncated"], data["dropped"]) == (6, 1, 1)  # the long prompt left no answer inside 64 tokens
    assert data["truncated_examples"] == [f"{tmp_path / 'chats.jsonl'}, line 6"]  # named where it is, after the shuffle


@pytest.mark.parametrize("setting, expected", [
    (["--set", "data.train={bad}"], "bad.jsonl, line 3: no ['completion']"),
    (["--set", "data.pad_token=<|im_end|>"], "data.pad_token '<|im_end|>' (id 2) is also a token that carries loss"),
    (["--set", "data.max_length=8"], "longer than data.max_length (8 tokens"),
])
def test_bad_instruction_data_fails_before_training_and_writes_nothing(tmp_path, capsys, llama_dir, setting, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "c", "completion": " d"}\n{"prompt": "e"}\n')
    out = tmp_path / "run"
    code, _, err = main(capsys, "tune", EXAMPLES / "sft_llama.yaml", "--set", f"model.path={llama_dir}", "--out", out, "--quiet",
                        *[s.format(bad=bad) for s in setting])
    assert code == 1 and expected in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not any(p.name.startswith(".run") for p in tmp_path.iterdir())


@pytest.mark.parametrize("raw, expected", [
    ({"model": {"path": "minilm"}, "data": {"train": "demo", "packing": True}}, "data.packing is for instruction data of a causal LM"),
    ({"model": {"path": "m", "task": "causal-lm"}, "data": {"train": "d.jsonl", "packing": True}, "method": {"type": "prompt", "tokenizer": "t"}},
     "data.packing cannot go with method.type 'prompt'"),
])
def test_recipe_refuses_misplaced_sft_settings(raw, expected):
    with pytest.raises(RecipeError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        validate(raw)
