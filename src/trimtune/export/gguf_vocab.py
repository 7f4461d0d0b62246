"""The tokenizer inside a GGUF file: tokens, their types, BPE merges, special ids, chat template.

trimtune writes byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen2 and the like), which
llama.cpp names ``gpt2``. Its pre-tokenizer (how text is split before BPE) is named by what the
Hugging Face tokenizer's ``pre_tokenizer`` holds; a split llama.cpp does not have is refused, since
the file would then tokenize text differently from the model's own tokenizer. Merges, special token
ids and the chat template are read by ``gguf.SpecialVocab`` from the tokenizer's saved files.
"""

from __future__ import annotations

import json
import tempfile

import gguf

from .errors import ExportError

# The regexes of Hugging Face tokenizers that split text as one of llama.cpp's pre-tokenizers does.
_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_SPLITS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


def _pre_tokenizer(spec: dict) -> str:
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"  # GPT-2's own regex, which byte-level BPE applies by default
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel" \
            and not steps[1].get("use_regex", True):
        name = _SPLITS.get(steps[0].get("pattern", {}).get("Regex"))
        if name:
            return name
    raise ExportError(f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) is not one llama.cpp has (GPT-2's, Llama 3's "
                      "or Qwen2's split); the GGUF file would split text differently from the model's tokenizer")


def _tokenizer_spec(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"{type(tokenizer).__name__} is a slow tokenizer; GGUF export reads a fast one's tokenizer.json")
    spec = json.loads(backend.to_str())
    model, decoder = spec.get("model", {}), spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise ExportError(f"the tokenizer is {model.get('type', 'unknown')} (decoder {decoder.get('type')}); trimtune's GGUF "
                          "export writes byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen2)")
    return spec


def check_tokenizer(tokenizer, vocab_size: int) -> str:
    """The llama.cpp pre-tokenizer name; refuses a missing or unwritable tokenizer."""
    if tokenizer is None:
        raise ExportError("no tokenizer: a GGUF file carries its tokenizer, so the model directory needs one "
                          "(tokenizer.json; save it there with tokenizer.save_pretrained(DIR))")
    pre = _pre_tokenizer(_tokenizer_spec(tokenizer))
    if len(tokenizer.get_vocab()) > vocab_size:
        raise ExportError(f"the tokenizer has {len(tokenizer.get_vocab())} tokens, more than the model's {vocab_size} embeddings")
    return pre


def _adds(tokenizer) -> tuple[bool, bool]:
    """(adds BOS, adds EOS) as the Hugging Face tokenizer does on plain text, so llama.cpp does the same."""
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return bos is not None and ids[:1] == [bos], eos is not None and len(ids) > 1 and ids[-1:] == [eos]


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    pre = check_tokenizer(tokenizer, vocab_size)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # an embedding row past the tokenizer's tokens
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:  # llama.cpp matches special (CONTROL) tokens in text only when asked, as transformers does
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as saved:
        tokenizer.save_pretrained(saved)
        special = gguf.SpecialVocab(saved, load_merges=True, n_vocab=vocab_size)
    add_bos, add_eos = _adds(tokenizer)
    special.add_special_token = {"bos": add_bos, "eos": add_eos}
    special.add_to_gguf(writer, quiet=True)
