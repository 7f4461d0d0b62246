"""What ``trimtune export --format gguf|onnx`` reads: a run directory, a ``trimtune shrink`` output or a
plain Hugging Face directory, as one plain model with its tokenizer.

GGUF and ONNX files hold plain weights, so an adapter must be folded in first. That changes the
weights (for QLoRA, the 4-bit base is dequantised under it), so it is done only when asked
(``--merge``); then the drift it causes is measured: max and mean |Δlogits| between the model as
trained (adapter unmerged, 4-bit base) and the merged one, on a few prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

DRIFT_PROMPTS = ("The food was good, but the service was slow.", "Tell me about the weather today.",
                 "1, 2, 3, 4, 5 and then")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class ExportSource:
    model: nn.Module
    tokenizer: object
    kind: str  # "run", "shrink" or "directory"
    task: str | None = None  # the run's task (image-classification needs image inputs)
    loaders: object = None  # the run's data, for example inputs
    drift: dict | None = None  # max / mean |Δlogits| of the merge, when an adapter was merged
    record: dict = field(default_factory=dict)  # what the file was made from, stored in it


def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


def merge_with_drift(model: nn.Module, tokenizer, keep_sparsity: bool = True) -> tuple[nn.Module, dict | None]:
    """(the plain merged model, drift or None): the drift is measured for a causal LM on ``DRIFT_PROMPTS``."""
    import trimtune as tt

    batch = None
    if tokenizer is not None and hasattr(model, "generate"):
        batch = tokenizer(list(DRIFT_PROMPTS), return_tensors="pt", padding=True)
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        before = _logits(model, batch)
    tt.merge(model, keep_sparsity=keep_sparsity)
    model = tt.unload(model, merge_adapters=True).eval()
    if batch is None:
        return model, None
    delta = (_logits(model, batch) - before).abs()[batch["attention_mask"].bool()]
    return model, {"max_abs_logits": float(delta.max()), "mean_abs_logits": float(delta.mean()), "prompts": len(DRIFT_PROMPTS)}


def _adapter_names(model: nn.Module, path: Path) -> list[str]:
    import trimtune as tt

    inputs = [n for n, c in tt.adapter_configs(model).items() if not tt.method_for_config(c).mergeable]
    if inputs:
        raise ValueError(f"{path} holds prompt/prefix adapters ({inputs}): extra inputs, not weights, so no GGUF or ONNX file "
                         "can hold them; load the run's adapter/ with trimtune or peft instead")
    return tt.active_adapters(model)


def _from_run(path: Path, merge: bool, check_base: bool, fmt: str, keep_sparsity: bool) -> ExportSource:
    from ..recipes.rebuild import is_shrink_dir, load_run_or_shrink

    kind = "shrink" if is_shrink_dir(path) else "run"
    run = load_run_or_shrink(path, check_base=check_base)
    model, drift = run.model, None
    adapters = _adapter_names(model, path)
    if adapters and not merge:
        raise ValueError(f"{path} holds an unmerged adapter ({', '.join(adapters)}); a {fmt.upper()} file holds plain weights: "
                         f"pass --merge to fold it in (its drift is reported), or run `trimtune merge {path} --out DIR` and "
                         "export DIR")
    if adapters:
        model, drift = merge_with_drift(model, run.tokenizer, keep_sparsity)
    else:
        import trimtune as tt

        model = tt.unload(model).eval()  # masks folded into the weights (pruned entries stay zero)
    return ExportSource(model, run.tokenizer, kind, run.recipe.model.task, run, drift,
                        {"source": str(path), "kind": kind, "adapters_merged": adapters})


def _model_class(path: Path, fmt: str):
    import transformers

    if fmt == "gguf":
        return transformers.AutoModelForCausalLM
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    named = (config.get("architectures") or [None])[0]
    if named is None:
        return transformers.AutoModel
    if not hasattr(transformers, named):
        raise ValueError(f"{path}/config.json names {named}, a class transformers does not have")
    return getattr(transformers, named)


def _from_directory(path: Path, fmt: str) -> ExportSource:
    from transformers import AutoTokenizer

    from ..models import require_safetensors

    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            raise ValueError(f"{path} is an adapter (adapter_config.json), not a model; a {fmt.upper()} file needs merged "
                             "weights: export the trimtune run it belongs to with --merge, or merge it into its base first")
        raise FileNotFoundError(f"{path} is neither a trimtune run nor a Hugging Face model directory (no config.json)")
    has_tokenizer = any((path / name).is_file() for name in TOKENIZER_FILES)
    if fmt == "gguf" and not has_tokenizer:
        raise FileNotFoundError(f"{path} has no tokenizer ({' / '.join(TOKENIZER_FILES[:2])}); a GGUF file carries the "
                                "tokenizer: save it there with tokenizer.save_pretrained(DIR)")
    tokenizer = AutoTokenizer.from_pretrained(path) if has_tokenizer else None
    if fmt == "gguf":  # what GGUF cannot express is refused before the weights are read
        import trimtune as tt
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
        tt.architecture_for_config(config)
        tt.check_gguf_tokenizer(tokenizer, config.vocab_size)
    require_safetensors(path)
    model = _model_class(path, fmt).from_pretrained(path, dtype=torch.float32).eval()
    return ExportSource(model, tokenizer, "directory", record={"source": str(path), "kind": "directory"})


def load_export_source(path: Path, fmt: str, merge: bool = False, check_base: bool = True,
                       keep_sparsity: bool = True) -> ExportSource:
    """``keep_sparsity``: a merged adapter is masked where the run pruned (``--dense`` turns that off)."""
    from ..recipes.rebuild import is_run_dir, is_shrink_dir

    if is_run_dir(path) or is_shrink_dir(path):
        return _from_run(path, merge, check_base, fmt, keep_sparsity)
    return _from_directory(path, fmt)
