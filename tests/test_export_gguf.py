"""`trimtune export --format gguf`, checked by llama.cpp (llama-cpp-python) on tiny random models with
real head, GQA and FFN shapes: its logits against transformers' on the same token ids, greedy
generation, the tokenizer and chat template inside the file; sources: a Hugging Face directory, a
shrunk and a pruned directory, a LoRA run and a QLoRA run merged on export.

Tolerances, relative to the largest |logit| (``relative_error``):
- f32: 1e-3 (the issue's bound; measured ~1e-6: the same float32 arithmetic in another order).
- f16: 1e-2. Each weight is rounded to 11 significant bits (relative error ≤ 2^-11 ≈ 4.9e-4); the
  roundings add up over the dot products and blocks: measured ~3e-3, the bound is about 20 units.
- q8_0: 1e-1. Every block of 32 weights is stored as 8-bit multiples of its largest |value| / 127
  (half a step ≈ 3.9e-3 of the block's scale), and llama.cpp quantises the activations to 8 bits too
  before each product: measured ~4e-2, the bound is about 25 half-steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from gguf_models import CHAT_TEMPLATE, bpe_tokenizer, causal_lm_dir
from llama_runtime import SKIP_REASON, llama_cpp_greedy, llama_cpp_logits, llama_cpp_metadata, llama_cpp_tokens, relative_error

from trimtune.cli import main

pytest.importorskip("llama_cpp", reason=SKIP_REASON)

TOLERANCE = {"f32": 1e-3, "f16": 1e-2, "q8_0": 1e-1}
PROMPT = "The soup was not bad at all, 12 stars. The waiter forgot us twice!"
LM_TEXTS = Path(__file__).resolve().parents[1] / "examples" / "data" / "lm_texts"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return causal_lm_dir(tmp_path_factory.mktemp("gguf") / "llama", "llama")


def export(source, out, *extra) -> dict:
    code = main(["export", str(source), "--format", "gguf", "--out", str(out), "--quiet", *map(str, extra)])
    assert code == 0
    return out


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_llama_logits_match_transformers(llama_dir, tmp_path, outtype, capsys):
    model, tokenizer = load(llama_dir)
    path = export(llama_dir, tmp_path / f"llama-{outtype}.gguf", "--outtype", outtype)
    ids = tokenizer(PROMPT)["input_ids"]
    error = relative_error(llama_cpp_logits(path, ids), hf_logits(model, ids))
    assert error < TOLERANCE[outtype], error


def test_llama_greedy_generation_is_identical_in_f32(llama_dir, tmp_path):
    model, tokenizer = load(llama_dir)
    path = export(llama_dir, tmp_path / "llama.gguf", "--outtype", "f32")
    ids = tokenizer(PROMPT)["input_ids"]
    ours = list(ids)
    with torch.no_grad():
        for _ in range(20):  # greedy by hand: no generation config (eos, lengths) in the way
            ours.append(int(model(torch.tensor([ours])).logits[0, -1].argmax()))
    assert llama_cpp_greedy(path, ids, 20) == ours[len(ids):]


def test_tokenizer_and_chat_template_are_in_the_file(llama_dir, tmp_path):
    _, tokenizer = load(llama_dir)
    path = export(llama_dir, tmp_path / "llama.gguf")
    for text in (PROMPT, "  two  spaces, tabs\tand 2024 digits ", "ünïcödé ☕"):
        assert llama_cpp_tokens(path, text) == tokenizer(text)["input_ids"]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert llama_cpp_tokens(path, chat, special=True) == tokenizer(chat)["input_ids"]  # <|im_start|> is one token
    metadata = llama_cpp_metadata(path)
    assert metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert int(metadata["tokenizer.ggml.eos_token_id"]) == tokenizer.eos_token_id
    assert json.loads(metadata["trimtune.export"])["source"] == str(llama_dir)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_llama3_and_qwen2_splits_tokenize_alike(pre, tmp_path):
    from trimtune.export.gguf_vocab import _SPLITS

    split = next(regex for regex, name in _SPLITS.items() if name == pre)
    source = causal_lm_dir(tmp_path / pre, "qwen2" if pre == "qwen2" else "llama", tokenizer=bpe_tokenizer(split=split))
    _, tokenizer = load(source)
    path = export(source, tmp_path / f"{pre}.gguf")
    assert llama_cpp_metadata(path)["tokenizer.ggml.pre"] == pre
    for text in (PROMPT, "In 2024: 1234567 digits, don't    stop\n\nnew lines", "ünïcödé ☕ it's"):
        assert llama_cpp_tokens(path, text) == tokenizer(text)["input_ids"], text


@pytest.mark.parametrize("kind", ["mistral", "qwen2", "gpt2"])
def test_other_architectures(kind, tmp_path):
    source = causal_lm_dir(tmp_path / kind, kind)
    model, tokenizer = load(source)
    path = export(source, tmp_path / f"{kind}.gguf", "--outtype", "f32")
    ids = tokenizer(PROMPT)["input_ids"]
    assert relative_error(llama_cpp_logits(path, ids), hf_logits(model, ids)) < TOLERANCE["f32"]


def test_non_default_shapes(tmp_path):
    """Head width not hidden / heads, 1 KV head for 2 query heads, an FFN narrower than the hidden size, 3 blocks:
    what a shrink leaves; and untied output weights."""
    source = causal_lm_dir(tmp_path / "odd", "llama", hidden_size=48, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                           intermediate_size=40, num_hidden_layers=3, tie_word_embeddings=False, attention_bias=True)
    model, tokenizer = load(source)
    ids = tokenizer(PROMPT)["input_ids"]
    for outtype in ("f32", "q8_0"):  # q8_0: rows of 48 or 40 do not split into blocks of 32, so those stay f16
        path = export(source, tmp_path / f"odd-{outtype}.gguf", "--outtype", outtype)
        assert relative_error(llama_cpp_logits(path, ids), hf_logits(model, ids)) < TOLERANCE[outtype]


def test_shrunk_and_pruned_directories(llama_dir, tmp_path, capsys):
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(p.read_text() for p in sorted(LM_TEXTS.glob("*.txt"))) * 3)
    small, pruned = tmp_path / "small", tmp_path / "pruned"
    assert main(["shrink", "--model", str(llama_dir), "--calib", str(text), "--nsamples", "4", "--seqlen", "32", "--heads", "0.5",
                 "--ffn", "0.25", "--hidden", "0.25", "--drop-layers", "1", "--out", str(small), "--quiet"]) == 0
    assert main(["prune", "--model", str(llama_dir), "--method", "magnitude", "--out", str(pruned), "--quiet"]) == 0
    capsys.readouterr()
    for source in (small, pruned):
        model, tokenizer = load(source)
        ids = tokenizer(PROMPT)["input_ids"]
        path = export(source, tmp_path / f"{source.name}.gguf", "--outtype", "f32")
        assert relative_error(llama_cpp_logits(path, ids), hf_logits(model, ids)) < TOLERANCE["f32"]
    assert load(small)[0].config.num_attention_heads == 2  # the shapes the file had to state


def tune(tmp_path, llama_dir, method: dict, name: str, command: str = "tune", section: str = "method") -> Path:
    recipe = {"model": {"path": str(llama_dir), "task": "causal-lm"},
              "data": {"train": str(LM_TEXTS), "eval_fraction": 0.34, "batch_size": 2, "max_length": 32},
              section: method, "train": {"max_steps": 3, "lr": 2e-2}}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / name
    assert main([command, str(tmp_path / f"{name}.yaml"), "--out", str(run), "--quiet"]) == 0
    return run


def test_pruning_run(llama_dir, tmp_path, capsys):
    """A run that pruned while training: its masks are folded into the exported weights (zeros stay zeros)."""
    from trimtune.recipes.rebuild import load_run

    run = tune(tmp_path, llama_dir, {"sparsity": 0.5}, "pruned", command="prune", section="prune")
    path = export(run, tmp_path / "pruned.gguf", "--outtype", "f32")
    trained = load_run(run)
    ids = trained.tokenizer(PROMPT)["input_ids"]
    assert relative_error(llama_cpp_logits(path, ids), hf_logits(trained.model, ids)) < TOLERANCE["f32"]


def test_lora_run_is_merged_when_asked(llama_dir, tmp_path, capsys):
    from trimtune.recipes.rebuild import load_run

    run = tune(tmp_path, llama_dir, {"type": "lora", "r": 4, "targets": "q_proj|v_proj|down_proj"}, "lora")
    capsys.readouterr()
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]) == 1
    assert "pass --merge" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()
    path = export(run, tmp_path / "lora.gguf", "--outtype", "f32", "--merge")
    trained = load_run(run)  # the adapter unmerged, as trained
    ids = trained.tokenizer(PROMPT)["input_ids"]
    assert relative_error(llama_cpp_logits(path, ids), hf_logits(trained.model, ids)) < TOLERANCE["f32"]
    assert relative_error(hf_logits(trained.model, ids), hf_logits(load(llama_dir)[0], ids)) > 1e-4  # the adapter changed it


def test_qlora_run_is_dequantised_merged_and_its_drift_reported(llama_dir, tmp_path, capsys):
    import trimtune as tt
    from trimtune.recipes.rebuild import load_run

    run = tune(tmp_path, llama_dir, {"type": "qlora", "r": 4, "targets": "q_proj|v_proj", "quant_type": "nf4"}, "qlora")
    capsys.readouterr()
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "q.gguf"), "--outtype", "f32", "--merge"]) == 0
    printed = capsys.readouterr().out
    drift = json.loads(printed.split("export: ")[1])["merge_drift"]
    assert drift["prompts"] == 3 and drift["max_abs_logits"] >= drift["mean_abs_logits"] > 0
    assert "max |Δlogits|" in printed
    trained = load_run(run)
    merged = tt.unload(tt.merge(trained.model), merge_adapters=True).eval()  # dequantised + merged, as exported
    ids = trained.tokenizer(PROMPT)["input_ids"]
    assert relative_error(llama_cpp_logits(tmp_path / "q.gguf", ids), hf_logits(merged, ids)) < TOLERANCE["f32"]
