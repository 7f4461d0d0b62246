"""Instruction data for causal LMs: what carries loss (prompt/completion, chat turns, plain text), EOS,
truncation reported, packing (TRL's windows; the same loss packed as unpacked), how a model keeps packed
examples apart, and every bad input named before anything runs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from gguf_models import CHAT_TEMPLATE, bpe_tokenizer

import trimtune as tt
from trimtune.data.instructions import read_instructions
from trimtune.data.loss_positions import loss_positions_only, supports_loss_positions
from trimtune.data.packed_attention import PackingError, packed_attention
from trimtune.data.packing import pack_examples, packed_collate, pad_collate
from trimtune.data.sft import SftOptions, sft_dataset, sft_loader
from trimtune.data.sft_tokens import IGNORE, Example, tokenize_records

MARKED = CHAT_TEMPLATE.replace("{{ m['content'] }}<|im_end|>",
                               "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>\n{% endgeneration %}"
                               "{% else %}{{ m['content'] }}<|im_end|>\n{% endif %}").replace("<|im_end|>\n{% endfor %}", "{% endfor %}")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How was the food?"},
        {"role": "assistant", "content": "The food was good."}, {"role": "user", "content": "And the service?"},
        {"role": "assistant", "content": "Slow."}]


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer()


def learned_text(tokenizer, example: Example) -> str:
    return tokenizer.decode([t for t in example.labels if t != IGNORE])


def test_prompt_completion_learns_the_completion_and_eos(tokenizer):
    record = {"prompt": "Review: the soup was cold.\nAnswer:", "completion": " the food, negative"}
    (example,), report = tokenize_records([record], tokenizer, max_length=64)
    assert example.input_ids == tokenizer(record["prompt"] + record["completion"] + "<|im_end|>")["input_ids"]
    assert learned_text(tokenizer, example) == " the food, negative<|im_end|>"
    (whole,), _ = tokenize_records([record], tokenizer, max_length=64, completion_only_loss=False)
    assert whole.labels == whole.input_ids
    (text,), _ = tokenize_records([{"text": "plain words<|im_end|>"}], tokenizer, max_length=64)  # EOS only once
    assert tokenizer.decode(text.input_ids) == "plain words<|im_end|>" and text.labels == text.input_ids
    assert report.loss_tokens == sum(t != IGNORE for t in example.labels)


def test_chat_learns_assistant_turns_with_or_without_generation_marks(tokenizer):
    (by_prefix,), _ = tokenize_records([{"messages": CHAT}], tokenizer, max_length=128)
    assert learned_text(tokenizer, by_prefix) == "The food was good.<|im_end|>\nSlow.<|im_end|>\n"
    (marked,), _ = tokenize_records([{"messages": CHAT}], tokenizer, max_length=128, chat_template=MARKED)
    assert marked.input_ids == by_prefix.input_ids and marked.labels == by_prefix.labels  # the template's own marks agree
    (whole,), _ = tokenize_records([{"messages": CHAT}], tokenizer, max_length=128, completion_only_loss=False)
    assert whole.labels == whole.input_ids
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template: give one as data.chat_template"):
        tokenize_records([{"messages": CHAT}], bare, max_length=128)
    (given,), _ = tokenize_records([{"messages": CHAT}], bare, max_length=128, chat_template=CHAT_TEMPLATE)
    assert given.input_ids == by_prefix.input_ids


def test_truncated_examples_are_counted_and_reported(tokenizer):
    records = [{"prompt": "Review: " + "very " * 30 + "long", "completion": " the food, positive"},
               {"prompt": "Short:", "completion": " " + "yes " * 40}, {"prompt": "Hi:", "completion": " ok"}]
    examples, report = tokenize_records(records, tokenizer, max_length=16)
    assert (report.examples, report.truncated, report.dropped, report.kept) == (3, 2, 1, 2)
    assert report.truncated_examples == ["example 1", "example 2"] and all(len(e.input_ids) <= 16 for e in examples)
    _, summary = sft_dataset(records, tokenizer, SftOptions(max_length=16))
    assert summary["truncated"] == 2 and summary["dropped"] == 1


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("rows, expected", [
    ([{"prompt": "a", "completion": "b"}, {"prompt": "c"}], r"bad.jsonl, line 2: no \['completion'\]"),
    ([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "  "}], r"bad.jsonl, line 2: the completion is empty"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}],
     r"bad.jsonl, line 1: message 1 has role 'bot'; allowed roles: \['system', 'user', 'assistant', 'tool'\]"),
    ([{"messages": [{"role": "user", "content": "a"}]}], r"bad.jsonl, line 1: the messages have no assistant turn"),
    ([{"question": "a"}], r"none of the instruction columns.*its columns are \['question'\]"),
])
def test_bad_records_name_file_and_line(tmp_path, rows, expected):
    with pytest.raises(ValueError, match=expected):
        read_instructions(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_csv_and_datasets_files_read_the_same_records(tmp_path):
    import datasets

    rows = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    (tmp_path / "d.csv").write_text("prompt,completion\np1,c1\np2,c2\n")
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    chats = [{"messages": CHAT}]
    datasets.Dataset.from_list(chats).save_to_disk(str(tmp_path / "chats"))
    without_where = lambda path: [{k: v for k, v in r.items() if k != "where"} for r in read_instructions(path)]
    assert without_where(tmp_path / "d.csv") == without_where(tmp_path / "d.parquet") == rows
    assert without_where(tmp_path / "chats") == chats
    assert [r["where"] for r in read_instructions(tmp_path / "d.csv")] == [f"{tmp_path / 'd.csv'}, line 2", f"{tmp_path / 'd.csv'}, line 3"]
    (tmp_path / "chats.csv").write_text("messages\n" + '"' + json.dumps(CHAT).replace('"', '""') + '"\n')
    assert without_where(tmp_path / "chats.csv") == chats  # a CSV cell holds the turns as JSON
    (tmp_path / "k.csv").write_text("prompt,completion\np1,c1\np2,\n")
    with pytest.raises(ValueError, match=r"k.csv, line 3: the completion is empty"):
        read_instructions(tmp_path / "k.csv")


def test_length_and_pad_token_refusals(tokenizer):
    records = [{"prompt": "Review: the soup was cold and late.", "completion": " the food, negative"}]
    with pytest.raises(ValueError, match=r"every one of the 1 examples is longer than data.max_length \(4 tokens"):
        tokenize_records(records, tokenizer, max_length=4)
    (cut,), report = tokenize_records([{"text": "plain text is only shortened"}], tokenizer, max_length=4)
    assert len(cut.input_ids) == 4 and report.truncated == 1
    with pytest.raises(ValueError, match=r"data.pad_token '<\|im_end\|>' \(id 2\) is also a token that carries loss.*such as '<\|endoftext\|>'"):
        sft_dataset(records, tokenizer, SftOptions(max_length=64, pad_token="<|im_end|>"))
    with pytest.raises(ValueError, match="not a token of the tokenizer's vocabulary"):
        sft_dataset(records, tokenizer, SftOptions(max_length=64, pad_token="<pad>"))
    assert sft_dataset(records, tokenizer, SftOptions(max_length=64))[1]["pad_token_id"] == tokenizer.pad_token_id


def test_best_fit_decreasing_windows():
    examples = [Example(list(range(n)), list(range(n))) for n in (5, 2, 3, 1, 4, 4)]
    rows = pack_examples(examples, 8)
    # longest first, each into the fullest window it fits: 5+3, 4+4, 2+1
    assert [r.lengths for r in rows] == [[5, 3], [4, 4], [2, 1]] and [r.members for r in rows] == [[0, 2], [4, 5], [1, 3]]
    batch = packed_collate()([rows[0]])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE, 1, 2, 3, 4, IGNORE, 1, 2]]  # no label across the boundary
    with pytest.raises(ValueError, match="example 1 has 5 tokens, more than the window of 4"):
        pack_examples(examples, 4)


def tiny_llama_for(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=len(tokenizer), max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


RECORDS = [{"prompt": f"Review: {text}\nAnswer:", "completion": f" {answer}"} for text, answer in [
    ("the soup was cold", "food, bad"), ("lovely staff", "service, good"), ("the bread was fresh and warm", "food, good"),
    ("we waited an hour", "service, bad"), ("great", "food, good"), ("rude waiter who never came back", "service, bad"),
    ("tasty", "food, good"), ("friendly and quick", "service, good")]]


def test_packed_training_gives_the_unpacked_losses(tokenizer):
    """The same examples in each step: packed windows (one row, restarting positions) vs padded rows."""
    options = SftOptions(max_length=64, packing=True)
    base = tiny_llama_for(tokenizer)
    packed_loader, report = sft_loader(RECORDS, tokenizer, options, batch_size=2, model=base)
    assert report["attention"] == "position_ids" and report["windows"] < len(RECORDS)
    examples, _ = sft_dataset(RECORDS, tokenizer, SftOptions(max_length=64))
    pad = pad_collate(tokenizer.pad_token_id)
    unpacked = [pad([examples[i] for row in packed_loader.dataset[k: k + 2] for i in row.members])
                for k in range(0, len(packed_loader.dataset), 2)]
    losses = {}
    for name, data in (("packed", list(packed_loader)), ("unpacked", unpacked)):
        model = tiny_llama_for(tokenizer)
        tt.apply(model, tt.LoraConfig(r=4, alpha=8, targets="q_proj|v_proj"))
        torch.manual_seed(1)
        losses[name] = tt.train(model, data, epochs=2, lr=1e-2, progress=False).losses
    assert len(losses["packed"]) == 2 * len(unpacked) >= 4
    assert max(abs(a - b) for a, b in zip(losses["packed"], losses["unpacked"])) < 1e-5
    assert losses["packed"][-1] < losses["packed"][0]  # it trained


class _Without(torch.nn.Module):
    """A model wrapper that drops some inputs: attention that cannot use them."""

    def __init__(self, model, dropped):
        super().__init__()
        self.model, self.dropped = model, dropped

    def forward(self, **batch):
        return self.model(**{k: v for k, v in batch.items() if k not in self.dropped})


def test_packing_checks_how_the_model_keeps_examples_apart(tokenizer, caplog):
    model = tiny_llama_for(tokenizer)
    tokens = list(range(10, 17))
    assert packed_attention(model, tokens) == "position_ids"  # transformers' packed-sequence mask (sdpa) from the positions
    assert packed_attention(_Without(model, {"position_ids"}), tokens) == "mask"  # the explicit block-diagonal mask
    with pytest.raises(PackingError, match="set data.packing: false"):
        packed_attention(_Without(model, {"position_ids", "attention_mask"}), tokens)
    loader, report = sft_loader(RECORDS, tokenizer, SftOptions(max_length=48, packing=True), batch_size=2,
                                model=_Without(model, {"position_ids"}))
    assert report["attention"] == "mask" and "falling back to a block-diagonal 4-D attention mask" in caplog.text
    assert next(iter(loader))["attention_mask"].dim() == 4


def test_only_loss_positions_reach_the_lm_head_where_the_loss_stays_the_same(tokenizer):
    model = tiny_llama_for(tokenizer).eval()
    examples, _ = sft_dataset(RECORDS[:3], tokenizer, SftOptions(max_length=64))
    batch = {**pad_collate(tokenizer.pad_token_id)(examples), "use_cache": False}
    reduced = loss_positions_only(batch)
    with torch.no_grad():
        full, fewer = model(**batch), model(**reduced)
    assert fewer.logits.shape[1] == reduced["logits_to_keep"].numel() < batch["input_ids"].shape[1] // 2
    assert abs(full.loss.item() - fewer.loss.item()) < 1e-6
    tokens = examples[0].input_ids[:7]
    assert supports_loss_positions(model, tokens)
    assert not supports_loss_positions(_Without(model, {"shift_labels"}), tokens)  # a model that would shift them again
    _, report = sft_loader(RECORDS, tokenizer, SftOptions(max_length=64), batch_size=2, model=_Without(model, {"logits_to_keep"}))
    assert report["loss_logits_only"] is False
