"""Instruction records -> token ids and labels, with TRL's SFTTrainer conventions so losses agree:

- ``text``: the text plus the EOS token (when it does not end with it); every token carries loss.
- ``prompt`` / ``completion``: ``prompt + completion + EOS`` tokenised whole; the completion starts where
  that and the tokenised prompt alone stop agreeing (a merge across the boundary moves it left).
- ``messages``: rendered by the chat template (it ends the turns itself, so no EOS is added); with a
  template that marks assistant text (``{% generation %}``) the tokenizer's assistant mask says what
  is learned, otherwise each assistant turn is what rendering it adds to the conversation before it.

With ``completion_only_loss`` off every token carries loss. Labels are -100 where there is none.
Examples longer than ``max_length`` keep their start; they are counted, and one left without any
loss token is counted as dropped; both are reported, never silent. Instruction data (not plain text)
whose every example is too long is refused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field

IGNORE = -100
_GENERATION_MARK = re.compile(r"\{%-?\s*generation\s*-?%\}")
log = logging.getLogger("trimtune.data")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class TokenReport:
    """What tokenising did to the examples (goes into the run's summary)."""
    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0  # truncated so far that no loss token was left
    max_length: int = 0
    longest: int = 0
    loss_tokens: int = 0
    truncated_examples: list[str] = field(default_factory=list)  # where the first few come from (file and line)

    def to_dict(self) -> dict:
        return asdict(self)


def tokenize_records(records: list[dict], tokenizer, max_length: int, completion_only_loss: bool = True,
                     chat_template: str | None = None) -> tuple[list[Example], TokenReport]:
    template = _template(records, tokenizer, chat_template)
    report = TokenReport(examples=len(records), max_length=max_length)
    examples = []
    for number, record in enumerate(records, 1):
        where = record.get("where") or f"example {number}"
        example = _tokenize(record, tokenizer, completion_only_loss, template, where)
        report.longest = max(report.longest, len(example.input_ids))
        if len(example.input_ids) > max_length:
            report.truncated += 1
            if len(report.truncated_examples) < 10:
                report.truncated_examples.append(where)
            example = Example(example.input_ids[:max_length], example.labels[:max_length])
            if all(label == IGNORE for label in example.labels[1:]):
                report.dropped += 1
                continue
        report.loss_tokens += sum(label != IGNORE for label in example.labels[1:])  # the first token is never predicted
        examples.append(example)
    report.kept = len(examples)
    _check_lengths(report, plain_text=all("text" in r for r in records))
    return examples, report


def _check_lengths(report: TokenReport, plain_text: bool) -> None:
    """Plain text is learned in full, so cutting it to ``max_length`` only shortens it (reported); an
    instruction cut in every example says ``max_length`` is wrong for the data."""
    if report.truncated == report.examples and not plain_text:
        raise ValueError(f"every one of the {report.examples} examples is longer than data.max_length ({report.max_length} tokens; "
                         f"the longest has {report.longest}): raise data.max_length")
    if not report.kept:
        raise ValueError(f"no example keeps a token to learn within data.max_length ({report.max_length})")
    if report.truncated:
        log.warning("%d of %d examples are longer than max_length %d and were cut (%d of them, left with nothing to learn, dropped); "
                    "%s%s", report.truncated, report.examples, report.max_length, report.dropped,
                    report.truncated_examples, " ..." if report.truncated > len(report.truncated_examples) else "")


def _template(records: list[dict], tokenizer, chat_template: str | None) -> str | None:
    if not any("messages" in r for r in records):
        return None
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("the data holds chat messages but the tokenizer has no chat template: give one as data.chat_template "
                         "(a Jinja string), or use a tokenizer that has one (model.tokenizer)")
    return template


def _tokenize(record: dict, tokenizer, completion_only_loss: bool, template: str | None, where: str) -> Example:
    if "messages" in record:
        return _chat(record["messages"], tokenizer, template, completion_only_loss, where)
    if "prompt" in record:
        return _prompt_completion(record["prompt"], record["completion"], tokenizer, completion_only_loss)
    ids = _ids(tokenizer, with_eos(record["text"], tokenizer))
    return Example(ids, list(ids))


def with_eos(text: str, tokenizer) -> str:
    eos = tokenizer.eos_token
    return text if eos is None or text.endswith(eos) else text + eos


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def _prompt_completion(prompt: str, completion: str, tokenizer, completion_only_loss: bool) -> Example:
    whole = _ids(tokenizer, prompt + with_eos(completion, tokenizer))
    if not completion_only_loss:
        return Example(whole, list(whole))
    start = _common_prefix(_ids(tokenizer, prompt), whole)
    return Example(whole, [IGNORE] * start + whole[start:])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _chat(messages: list[dict], tokenizer, template: str, completion_only_loss: bool, where: str) -> Example:
    if not completion_only_loss:
        ids = _rendered(tokenizer, messages, template)
        return Example(ids, list(ids))
    if _GENERATION_MARK.search(template):
        out = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    else:
        ids = _rendered(tokenizer, messages, template)
        mask = _assistant_mask_by_prefixes(messages, ids, tokenizer, template, where)
    if not any(mask):
        raise ValueError(f"{where}: the chat template marks no assistant token to learn")
    return Example(ids, [t if m else IGNORE for t, m in zip(ids, mask)])


def _rendered(tokenizer, messages: list[dict], template: str, add_generation_prompt: bool = False) -> list[int]:
    if not messages:
        return []
    out = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                        add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"])


def _assistant_mask_by_prefixes(messages, ids, tokenizer, template, where: str) -> list[int]:
    """Each assistant turn is what rendering it adds to the conversation before it (with the generation
    prompt), which holds when the template renders a conversation's start the same alone as in full."""
    mask = [0] * len(ids)
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = _rendered(tokenizer, messages[:i], template, add_generation_prompt=True)
        through = _rendered(tokenizer, messages[: i + 1], template)
        if before != ids[: len(before)] or through != ids[: len(through)]:
            raise ValueError(f"{where}: the chat template renders the conversation before message {i} differently "
                             "alone than in full, so the assistant tokens cannot be told apart; mark them with "
                             "{% generation %}...{% endgeneration %} in data.chat_template, or set data.completion_only_loss: false")
        mask[len(before): len(through)] = [1] * (len(through) - len(before))
    return mask


def loss_token_ids(examples: list[Example]) -> set[int]:
    return {label for e in examples for label in e.labels[1:] if label != IGNORE}


def pad_token_id(tokenizer, examples: list[Example], pad_token: str | None = None) -> int:
    """The id batches are padded with. It must carry no loss: a pad equal to a learned token (often EOS)
    is masked out of the labels by tools that mask by id, so the model would never learn to stop."""
    learned = loss_token_ids(examples)
    if pad_token is not None:
        pad_id = tokenizer.convert_tokens_to_ids(pad_token)
        if pad_id is None or (pad_id == tokenizer.unk_token_id and pad_token != tokenizer.unk_token):
            raise ValueError(f"data.pad_token {pad_token!r} is not a token of the tokenizer's vocabulary")
        source = "data.pad_token"
    elif tokenizer.pad_token_id is not None:
        pad_id, pad_token, source = tokenizer.pad_token_id, tokenizer.pad_token, "the tokenizer's pad token"
    else:
        free = _free_special_tokens(tokenizer, learned)
        if not free:
            raise ValueError("the tokenizer has no pad token and every special token carries loss: set data.pad_token")
        return tokenizer.convert_tokens_to_ids(free[0])
    if pad_id in learned:
        free = _free_special_tokens(tokenizer, learned)
        hint = f", such as {free[0]!r}" if free else ""
        raise ValueError(f"{source} {pad_token!r} (id {pad_id}) is also a token that carries loss in the data (the end of an "
                         f"example learns it); set data.pad_token to a token that carries none{hint}")
    return pad_id


def _free_special_tokens(tokenizer, learned: set[int]) -> list[str]:
    names = [tokenizer.unk_token, tokenizer.pad_token, *tokenizer.all_special_tokens]
    return [t for t in dict.fromkeys(names) if t is not None and tokenizer.convert_tokens_to_ids(t) not in learned]
