"""`trimtune tune` on instruction data (examples/sft_llama.yaml on a tiny random Llama with a chat
tokenizer, in process): packed prompt/completion pairs and chats train, the run reports what tokenising
cut and how packed examples are kept apart, eval reads the run back; bad data and bad settings are one
clear line before any step, with nothing left at --out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gguf_models import causal_lm_dir

import trimtune as tt
from trimtune import cli
from trimtune.recipes.rebuild import load_run
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


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, llama_dir) -> Path:
    run = tmp_path_factory.mktemp("sft_run") / "sft"
    assert cli.main([str(a) for a in ("tune", EXAMPLES / "sft_llama.yaml", "--set", f"model.path={llama_dir}", "--out", run, *QUICK)]) == 0
    return run


def test_sft_recipe_packs_trains_and_reports(capsys, sft_run):
    run = sft_run
    summary = json.loads((run / "summary.json").read_text())
    data = summary["data"]["train"]
    assert data["attention"] == "position_ids" and data["windows"] < data["kept"] and data["truncated"] == 0
    assert summary["steps"] == len(json.loads((run / "metrics.json").read_text())["losses"]) == -(-data["windows"] // 2)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    code, out, err = main(capsys, "eval", run, "--quiet")
    assert code == 0, err
    assert json.loads(out.split("eval: ", 1)[1].splitlines()[0]) == summary["after"]


def test_eval_gives_the_perplexity_of_the_completion_tokens(capsys, sft_run):
    code, out, err = main(capsys, "eval", sft_run, "--quiet")
    assert code == 0, err
    metrics = json.loads(out.split("eval: ", 1)[1].splitlines()[0])
    run = load_run(sft_run)
    nll, targets, tokens = 0.0, 0, 0
    with torch.no_grad():  # by hand: every target token of every eval batch, however the batches were cut
        for batch in run.loaders().eval:
            logits = run.model(**{k: v for k, v in batch.items() if k not in ("labels", "shift_labels")}).logits
            if "shift_labels" in batch:
                target = batch["shift_labels"]
            else:
                logits, target = logits[:, :-1], batch["labels"][:, 1:]
            nll += float(F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum"))
            targets += int((target != -100).sum())
            tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    assert metrics["target_tokens"] == targets < tokens / 2  # completions only: the prompts carry no loss
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / targets), rel=1e-5)


def test_eval_and_generate_use_the_run_with_its_adapter_unmerged(capsys, sft_run, llama_dir, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The food was good and the service was slow. " * 12)
    scores = {}
    for name, source in (("run", [sft_run]), ("base", ["--model", llama_dir])):
        code, out, err = main(capsys, "eval", *source, "--perplexity", text, "--seqlen", "32", "--quiet")
        assert code == 0, err
        scores[name] = json.loads(out.split("perplexity: ", 1)[1])["perplexity"]
    run = load_run(sft_run)
    assert any("lora" in type(m).__name__.lower() for m in run.model.modules())  # the adapter is there, not merged in
    assert scores["run"] == pytest.approx(tt.perplexity_of_file(run.model, run.tokenizer, text, 32)["perplexity"], rel=1e-6)
    assert abs(scores["run"] - scores["base"]) > 1e-4 * scores["base"]
    code, out, err = main(capsys, "generate", sft_run, "--prompt", "How was the food?", "--prompt", "Service", "--max-new-tokens", "6",
                          "--quiet")
    assert code == 0, err
    generated = json.loads(out.split("generate: ", 1)[1])
    for result in generated:
        ids = run.tokenizer(result["prompt"], return_tensors="pt")["input_ids"]
        expected = run.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                      pad_token_id=run.tokenizer.pad_token_id)
        assert result["completion"] == run.tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)
    code, out, err = main(capsys, "generate", sft_run, "--prompt", "Hi", "--chat", "--max-new-tokens", "3", "--quiet")
    assert code == 0, err


@pytest.mark.parametrize("setting, expected", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    (["--temperature", "-1"], "--temperature must be 0 (greedy) or positive, got -1.0"),
])
def test_generate_refuses_bad_settings(capsys, sft_run, setting, expected):
    code, _, err = main(capsys, "generate", sft_run, "--prompt", "Hi", *setting)
    assert code == 1 and expected in err


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
