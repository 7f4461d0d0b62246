"""Tuning methods side by side with peft: trainable parameters, train step time, peak memory,
inference overhead, 4-bit weight footprint; and a quality check on the demo reviews.

The benchmark is a table of method entries (``ENTRIES``): each names a model, how trimtune applies
the method and how peft does (None where peft has no such method). Add a row by appending an
``Entry``. Step = forward + loss + backward + AdamW step + zero_grad on a fixed batch; times are
medians of interleaved rounds (``_harness.time_variants``), peak memory is the RSS high-water mark
of the training steps in a fresh child process per variant (``_harness.peak_memory_mb``).

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/tuners.py            # speed/memory table
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tuners.py --quality --threads 1  # demo accuracy per method
    ... --quality --side peft                                               # the same with peft's implementation
    ... --small / --quick                                                   # smaller / tiny shapes
    ... --only "IA3@llama" "Prompt tuning 20"  --skip ...                   # some entries, in this order
    ... --step-only --threads 1 --small                                     # step wall + CPU medians only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # the peft + bnb baseline builder

import _harness
from _harness import markdown_table, memory_method, peak_memory_mb, ratio, set_threads, time_variants

import trimtune as tt

SHAPES = {  # (batch, seq)
    "minilm": (16, 128),
    "llama": (4, 256),
}
QUICK_SHAPES = {"minilm": (2, 16), "llama": (2, 16)}
# For a crowded machine: the shapes cost ~1 min per train step there (see docs/benchmarks.md).
SMALL_SHAPES = {"minilm": (8, 64), "llama": (2, 128)}


# ---- models ----
def build_model(name: str, quick: bool = False):
    torch.manual_seed(0)
    if name == "minilm":
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(tt_minilm()), num_labels=4)
    from transformers import LlamaConfig, LlamaForCausalLM

    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2) if quick else dict(
        hidden_size=512, intermediate_size=1408, num_hidden_layers=8)  # 1408 = 22 x 64: bnb CPU inference needs whole blocks
    config = LlamaConfig(num_attention_heads=8, num_key_value_heads=4, vocab_size=8000,
                         max_position_embeddings=512, **size)
    return LlamaForCausalLM(config)


def tt_minilm():
    from trimtune.models import minilm_path

    return minilm_path()


def batch_for(model_name: str, shapes) -> dict:
    batch, seq = shapes[model_name]
    torch.manual_seed(1)
    ids = torch.randint(3, 8000 if model_name == "llama" else 30000, (batch, seq))
    labels = torch.randint(0, 4, (batch,)) if model_name == "minilm" else ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


# ---- the method table ----
def _peft(config_factory):
    def apply(model):
        from peft import get_peft_model

        return get_peft_model(model, config_factory())

    return apply


def _peft_lora_llama(model):
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    return get_peft_model(model, PeftLora(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))


def _peft_qlora(compute_dtype: str = "float32", skip=("lm_head",)):
    def apply(model):
        from _peft_parity import to_bnb_linear4bit

        return _peft_lora_llama(to_bnb_linear4bit(model, tt.QuantConfig(compute_dtype=compute_dtype), skip=skip))

    return apply


def _ours(config_factory):
    def apply(model):
        return tt.apply(model, config_factory())

    return apply


def _peft_adalora():
    from peft import AdaLoraConfig

    return AdaLoraConfig(init_r=12, target_r=8, lora_alpha=16, total_step=1000)


@dataclass
class Entry:
    method: str
    model: str
    ours: Callable
    peft: Callable | None = None
    checkpointing: bool = False
    notes: list[str] = field(default_factory=list)
    # more variants timed in the same interleaved rounds, e.g. fp32 LoRA for QLoRA: its target is a
    # ratio to fp32 LoRA's step, which must not come from another entry's run under another load
    references: dict[str, Callable] = field(default_factory=dict)


TOKENS_16 = list(range(1000, 1016))  # embedding rows that train (the random batches hit some of them)


def _entries() -> list[Entry]:
    from peft import HiraConfig as PeftHira
    from peft import HRAConfig as PeftHRA
    from peft import IA3Config as PeftIA3
    from peft import LNTuningConfig as PeftLN
    from peft import TrainableTokensConfig as PeftTokens
    from peft import LoHaConfig as PeftLoHa
    from peft import LoKrConfig as PeftLoKr
    from peft import BOFTConfig as PeftBOFT
    from peft import OFTConfig as PeftOFT
    from peft import LoraConfig as PeftLora
    from peft import ShiraConfig as PeftShira
    from peft import VeraConfig as PeftVera

    entries = []
    for model in ("minilm", "llama"):
        targets = ["query", "value"] if model == "minilm" else ["q_proj", "v_proj"]
        entries += [
            Entry("LoRA r=8", model, _ours(lambda: tt.LoraConfig(r=8, alpha=16)),
                  _peft(lambda t=targets: PeftLora(r=8, lora_alpha=16, target_modules=t))),
            Entry("DoRA r=8", model, _ours(lambda: tt.DoraConfig(r=8, alpha=16)),
                  _peft(lambda t=targets: PeftLora(r=8, lora_alpha=16, use_dora=True, target_modules=t))),
            Entry("VeRA r=256", model, _ours(lambda: tt.VeraConfig(r=256)),
                  _peft(lambda t=targets: PeftVera(r=256, target_modules=t))),
            Entry("LoHa r=8", model, _ours(lambda: tt.LoHaConfig(r=8, alpha=16)),
                  _peft(lambda t=targets: PeftLoHa(r=8, alpha=16, target_modules=t))),
            Entry("LoKr r=8", model, _ours(lambda: tt.LoKrConfig(r=8, alpha=16)),
                  _peft(lambda t=targets: PeftLoKr(r=8, alpha=16, target_modules=t))),
            Entry("HRA r=8", model, _ours(lambda: tt.HRAConfig(r=8)),
                  _peft(lambda t=targets: PeftHRA(r=8, target_modules=t))),
            Entry("HiRA r=32", model, _ours(lambda: tt.HiraConfig(r=32)),
                  _peft(lambda t=targets: PeftHira(r=32, target_modules=t))),
            # r=16: --quick's Llama v_proj (32 x 64) has room for r <= 21 (r · (out + in) entries)
            Entry("SHiRA r=16", model, _ours(lambda: tt.ShiraConfig(r=16)),
                  _peft(lambda t=targets: PeftShira(r=16, target_modules=t))),
            Entry("OFT b=32", model, _ours(lambda: tt.OFTConfig(oft_block_size=32)),
                  _peft(lambda t=targets: PeftOFT(oft_block_size=32, target_modules=t))),
            # one butterfly factor: peft builds more only with its CUDA kernel (on a CPU it falls back to one)
            Entry("BOFT b=8", model, _ours(lambda: tt.BOFTConfig(boft_block_size=8)),
                  _peft(lambda t=targets: PeftBOFT(boft_block_size=8, target_modules=t))),
            Entry("IA3", model, _ours(tt.IA3Config), _peft(PeftIA3)),
            Entry("AdaLoRA 12->8", model, _ours(lambda: tt.AdaLoraConfig(init_r=12, target_r=8, alpha=16, total_step=1000)),
                  _peft(_peft_adalora)),
            Entry("Bottleneck (Houlsby, /16)", model, _ours(tt.BottleneckConfig)),
            # peft has no BERT default; trimtune's is BERT's LayerNorms
            Entry("LN tuning", model, _ours(tt.LNTuningConfig),
                  _peft(lambda m=model: PeftLN(target_modules=["LayerNorm"] if m == "minilm" else None))),
            Entry("Trainable tokens 16", model, _ours(lambda: tt.TrainableTokensConfig(token_indices=TOKENS_16)),
                  _peft(lambda: PeftTokens(token_indices=TOKENS_16))),
        ]
        entries += _prompt_entries(model)
    fp32_lora = {"lora_ours": _ours(lambda: tt.LoraConfig(r=8, alpha=16)), "lora_peft": _peft_lora_llama}
    entries += [
        Entry("QLoRA NF4 r=8", "llama", _ours(lambda: tt.QLoraConfig(r=8, alpha=16)), _peft_qlora(), references=fp32_lora),
        Entry("QLoRA NF4 r=8 bf16 compute", "llama", _ours(lambda: tt.QLoraConfig(r=8, alpha=16, compute_dtype="bfloat16")),
              _peft_qlora("bfloat16"), references=fp32_lora),
        # the output head in 4 bits too (transformers and the QLoRA paper keep it in 16/32 bits): the
        # footprint when the fp32 embedding and head dominate, as in this small-vocabulary model
        Entry("QLoRA NF4 r=8, head in 4 bits", "llama", _ours(lambda: tt.QLoraConfig(r=8, alpha=16, quantize=nn.Linear)),
              _peft_qlora(skip=()), references=fp32_lora),
        Entry("LoRA r=8 + ckpt", "llama", _ours(lambda: tt.LoraConfig(r=8, alpha=16)), _peft_lora_llama, checkpointing=True),
        Entry("QLoRA NF4 r=8 + ckpt", "llama", _ours(lambda: tt.QLoraConfig(r=8, alpha=16)), _peft_qlora(), checkpointing=True),
        # no peft side: peft's prefixes ride in the cache, which transformers' checkpointed layers drop
        # (peft 0.21.2 then fails on a mask/key length mismatch)
        Entry("Prefix tuning 20 + ckpt", "llama", _ours(lambda: tt.PrefixTuningConfig(num_virtual_tokens=20)), checkpointing=True),
    ]
    return entries


def _prompt_entries(model: str) -> list[Entry]:
    """Input-side methods (20 virtual tokens), peft's counterpart for the model's task."""
    import peft

    task = "SEQ_CLS" if model == "minilm" else "CAUSAL_LM"
    head = ["classifier"] if model == "minilm" else []  # peft's SEQ_CLS task trains the classifier too
    return [
        Entry("Prompt tuning 20", model, _ours(lambda: tt.PromptTuningConfig(num_virtual_tokens=20, modules_to_save=head)),
              _peft(lambda: peft.PromptTuningConfig(task_type=task, num_virtual_tokens=20))),
        Entry("P-tuning MLP 20", model,
              _ours(lambda: tt.PTuningConfig(num_virtual_tokens=20, encoder_hidden_size=128, modules_to_save=head)),
              _peft(lambda: peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=20, encoder_hidden_size=128))),
        Entry("Prefix tuning 20", model, _ours(lambda: tt.PrefixTuningConfig(num_virtual_tokens=20, modules_to_save=head)),
              _peft(lambda: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=20))),
        Entry("Prefix tuning 20 + MLP", model,
              _ours(lambda: tt.PrefixTuningConfig(num_virtual_tokens=20, projection=True, encoder_hidden_size=128,
                                                  modules_to_save=head)),
              _peft(lambda: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=20, prefix_projection=True,
                                                    encoder_hidden_size=128))),
    ]


ENTRIES: list[Entry] = []  # filled on first use (importing peft here would slow every import)


def entries() -> list[Entry]:
    if not ENTRIES:
        ENTRIES.extend(_entries())
    return ENTRIES


# ---- what is measured ----
def shapes_for(size: str) -> dict:
    return {"quick": QUICK_SHAPES, "small": SMALL_SHAPES, "full": SHAPES}[size]


def prepared(index: int, side: str, size: str):
    """(model, batch) for entry ``index`` with the method applied by ``side`` ("ours"/"peft"/"base"/a reference)."""
    entry = entries()[index]
    model = build_model(entry.model, quick=size == "quick")
    if side != "base":
        model = {"ours": entry.ours, "peft": entry.peft, **entry.references}[side](model)
    if entry.checkpointing:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, batch_for(entry.model, shapes_for(size))


def train_step_fn(model, batch) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def forward_fn(model, batch) -> Callable[[], None]:
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def forward():
        with torch.no_grad():
            model(**inputs)

    return forward


def build_train_step(index: int, side: str, size: str):  # module level: runs in a memory child
    return train_step_fn(*prepared(index, side, size))


def weight_mb(model) -> float:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def measure(index: int, size: str, rounds: int, step_only: bool = False) -> dict:
    entry = entries()[index]
    row = {"method": entry.method, "model": entry.model}
    models = {side: prepared(index, side, size) for side in ["ours", "base"]}
    if entry.peft:
        try:  # a broken baseline (e.g. peft's prompt methods on a newer transformers) must not hide ours
            models["peft"] = prepared(index, "peft", size)
            train_step_fn(*models["peft"])()
        except Exception as err:  # noqa: BLE001 - recorded in the row
            models.pop("peft", None)
            row["peft_error"] = f"{type(err).__name__}: {err}"
    sides = [side for side in ("ours", "peft") if side in models]
    for side in sides:
        row[f"trainable_{side}"] = tt.trainable_parameters(models[side][0])[0] if side == "ours" else \
            models[side][0].get_nb_trainable_parameters()[0]
        row[f"weights_mb_{side}"] = weight_mb(models[side][0])
    row["weights_mb_base"] = weight_mb(models["base"][0])
    for name in entry.references:
        models[name] = prepared(index, name, size)
    steps = {side: train_step_fn(*models[side]) for side in sides + list(entry.references)}
    step_times = time_variants(steps, rounds=rounds, warmup=1)
    for side in sides + list(entry.references):
        row[f"step_ms_{side}"] = step_times[side].median_ms
        row[f"step_cpu_ms_{side}"] = step_times[side].cpu_median_ms  # steadier than wall on a crowded machine
        row[f"spread_pct_{side}"] = step_times[side].spread_pct
    if step_only:
        return row
    for name in entry.references:
        del models[name]
    forwards = {side: forward_fn(*models[side]) for side in sides + ["base"]}
    forward_times = time_variants(forwards, rounds=rounds, warmup=1)
    for side in sides:
        row[f"infer_overhead_{side}"] = ratio(forward_times[side], forward_times["base"]) - 1
    del models, steps, forwards
    for side in sides:
        row[f"peak_mb_{side}"], row[f"peak_total_mb_{side}"] = peak_memory_mb(
            build_train_step, index, side, size, calls=2, with_model=True)
    return row


def measure_or_report(index: int, size: str, rounds: int, step_only: bool = False) -> dict:
    """``measure``, or a row saying why the entry could not be measured (one broken method must not
    lose the rest of a long run)."""
    entry = entries()[index]
    try:
        return measure(index, size, rounds, step_only)
    except Exception as err:  # noqa: BLE001 - recorded in the table, not hidden
        return {"method": entry.method, "model": entry.model, "error": f"{type(err).__name__}: {err}"}


def speed_table(rows: list[dict]) -> str:
    headers = ["method", "model", "trainable (ours / peft)", "step ms ours", "step ms peft", "ours / peft", "(CPU)",
               "peak MB ours", "peak MB peft", "incl. model MB ours", "incl. model MB peft",
               "infer overhead ours", "infer overhead peft", "step noise ±% ours / peft"]
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["method"], r["model"], f"not measured: {r['error'][:120]}"] + [""] * (len(headers) - 3))
            continue
        has_peft = "step_ms_peft" in r
        no_peft = f"peft failed: {r['peft_error'][:80]}" if "peft_error" in r else "-"
        table.append([
            r["method"], r["model"],
            f"{r['trainable_ours']:,} / {r['trainable_peft']:,}" if has_peft else f"{r['trainable_ours']:,} / -",
            f"{r['step_ms_ours']:,.0f}", f"{r['step_ms_peft']:,.0f}" if has_peft else no_peft,
            f"{r['step_ms_ours'] / r['step_ms_peft']:.2f}" if has_peft else "-",
            f"{r['step_cpu_ms_ours'] / r['step_cpu_ms_peft']:.2f}" if has_peft and "step_cpu_ms_ours" in r else "-",
            f"{r['peak_mb_ours']:.0f}", f"{r['peak_mb_peft']:.0f}" if has_peft else "-",
            f"{r['peak_total_mb_ours']:.0f}", f"{r['peak_total_mb_peft']:.0f}" if has_peft else "-",
            f"{100 * r['infer_overhead_ours']:+.0f} %", f"{100 * r['infer_overhead_peft']:+.0f} %" if has_peft else "-",
            f"{r['spread_pct_ours']:.0f} / {r['spread_pct_peft']:.0f}" if has_peft else f"{r['spread_pct_ours']:.0f} / -",
        ])
    return markdown_table(headers, table)


def step_table(rows: list[dict]) -> str:
    """``--step-only`` rows: wall and process-CPU medians of the train step, ours vs peft."""
    table = [[r["method"], r["model"], *(f"{r[k]:,.0f}" for k in ("step_ms_ours", "step_ms_peft")),
              f"{r['step_ms_ours'] / r['step_ms_peft']:.3f}", *(f"{r[k]:,.0f}" for k in ("step_cpu_ms_ours", "step_cpu_ms_peft")),
              f"{r['step_cpu_ms_ours'] / r['step_cpu_ms_peft']:.3f}"]
             for r in rows if "step_ms_peft" in r]
    return markdown_table(["method", "model", "wall ms ours", "wall ms peft", "ours / peft", "CPU ms ours", "CPU ms peft",
                           "ours / peft (CPU)"], table)


def qlora_summary(rows: list[dict]) -> str:
    """The QLoRA targets, each from the rows it needs (a line is left out when one is missing).
    Peaks here include the model (weights + training), since a 4-bit base is what QLoRA saves;
    QLoRA and fp32 LoRA come from separate entries, i.e. separate interleavings."""
    by = {r["method"]: r for r in rows if r["model"] == "llama" and "error" not in r}
    lora, qlora, lora_ck, qlora_ck = (by.get(n) for n in ("LoRA r=8", "QLoRA NF4 r=8", "LoRA r=8 + ckpt", "QLoRA NF4 r=8 + ckpt"))
    total = "peak_total_mb"
    lines = []
    footprints = [r for name, r in by.items() if name.startswith("QLoRA") and "weights_mb_peft" in r
                  and not (name.endswith(" + ckpt") and name.removesuffix(" + ckpt") in by)]  # same weights as its twin
    for q in footprints:
        lines.append(f"- {q['method']} weight footprint / fp32 model: ours {q['weights_mb_ours'] / q['weights_mb_base']:.3f}, "
                     f"peft+bnb {q['weights_mb_peft'] / q['weights_mb_base']:.3f} (target <= 0.35)")
    if not all(r is None or f"{total}_ours" in r for r in (lora, qlora, lora_ck, qlora_ck)):  # --step-only rows
        lora = qlora = lora_ck = qlora_ck = None
    for q in (r for r in rows if "step_ms_lora_ours" in r and "step_ms_peft" in r and "error" not in r):
        lines.append(f"- {q['method']} step / fp32 LoRA step, same rounds: ours {q['step_ms_ours'] / q['step_ms_lora_ours']:.2f} "
                     f"(CPU {q['step_cpu_ms_ours'] / q['step_cpu_ms_lora_ours']:.2f}), peft+bnb / peft "
                     f"{q['step_ms_peft'] / q['step_ms_lora_peft']:.2f} (CPU {q['step_cpu_ms_peft'] / q['step_cpu_ms_lora_peft']:.2f}) "
                     "(target <= 1.0)")
    if qlora_ck:
        lines.append(f"- QLoRA + checkpointing peak incl. model, ours / peft+bnb: "
                     f"{qlora_ck[f'{total}_ours'] / qlora_ck[f'{total}_peft']:.2f} (target <= 1)")
    if qlora_ck and lora:
        lines.append(f"- QLoRA + checkpointing peak incl. model / fp32 LoRA's (no checkpointing): ours "
                     f"{qlora_ck[f'{total}_ours'] / lora[f'{total}_ours']:.2f}, peft+bnb "
                     f"{qlora_ck[f'{total}_peft'] / lora[f'{total}_peft']:.2f} (peft+bnb about 0.75 per the issue)")
    if qlora_ck and lora_ck:
        lines.append(f"- QLoRA + checkpointing peak incl. model / fp32 LoRA + checkpointing's: ours "
                     f"{qlora_ck[f'{total}_ours'] / lora_ck[f'{total}_ours']:.2f}, peft+bnb "
                     f"{qlora_ck[f'{total}_peft'] / lora_ck[f'{total}_peft']:.2f}")
    if lora_ck and lora:
        lines.append(f"- LoRA + checkpointing peak incl. model / LoRA's: ours {lora_ck[f'{total}_ours'] / lora[f'{total}_ours']:.2f}, "
                     f"peft {lora_ck[f'{total}_peft'] / lora[f'{total}_peft']:.2f}")
    return "\n".join(lines) or "QLoRA summary: no QLoRA rows measured"


# ---- quality on the demo reviews ----
QUALITY = {  # method -> (config factory, learning rate); every one trains a copy of the classifier head
    "LoRA r=8": (lambda: tt.LoraConfig(r=8, alpha=16, targets="query|value", modules_to_save=["classifier"]), 1e-3),
    "DoRA r=8": (lambda: tt.DoraConfig(r=8, alpha=16, targets="query|value", modules_to_save=["classifier"]), 1e-3),
    # lr chosen on seed 0 (1e-2: 65.0 %, 3e-2: 72.5, 1e-1: 68.3): VeRA's few vectors want a large rate
    "VeRA r=256": (lambda: tt.VeraConfig(r=256, targets="query|value", modules_to_save=["classifier"]), 3e-2),
    "LoHa r=8": (lambda: tt.LoHaConfig(r=8, alpha=16, targets="query|value", modules_to_save=["classifier"]), 1e-3),
    "LoKr r=8": (lambda: tt.LoKrConfig(r=8, alpha=16, targets="query|value", modules_to_save=["classifier"]), 1e-3),
    "HRA r=8": (lambda: tt.HRAConfig(r=8, targets="query|value", modules_to_save=["classifier"]), 1e-3),
    "HiRA r=32": (lambda: tt.HiraConfig(r=32, targets="query|value", modules_to_save=["classifier"]), 1e-3),
    "SHiRA r=16": (lambda: tt.ShiraConfig(r=16, targets="query|value", modules_to_save=["classifier"]), 1e-3),
    "IA3": (lambda: tt.IA3Config(modules_to_save=["classifier"]), 1e-2),
    # orth_reg_weight 0.1 as in the AdaLoRA paper's GLUE runs (peft's default 0.5 cost 4 points here)
    "AdaLoRA 12->8": (lambda: tt.AdaLoraConfig(init_r=12, target_r=8, alpha=16, tinit=20, tfinal=40, orth_reg_weight=0.1,
                                               targets="query|value", modules_to_save=["classifier"]), 5e-3),
    "Bottleneck Houlsby /16": (lambda: tt.BottleneckConfig(modules_to_save=["classifier"]), 2e-3),
    "Bottleneck Pfeiffer /16": (lambda: tt.BottleneckConfig(placement="pfeiffer", modules_to_save=["classifier"]), 2e-3),
    "QLoRA NF4 r=8": (lambda: tt.QLoraConfig(r=8, alpha=16, targets="query|value", modules_to_save=["classifier"]), 1e-3),
    "QLoRA NF4 r=8 bf16 compute": (lambda: tt.QLoraConfig(r=8, alpha=16, targets="query|value", compute_dtype="bfloat16",
                                                          modules_to_save=["classifier"]), 1e-3),
    # initialised from the class-label words, as Lester et al. found best; 50 tokens: over seeds 0-2, 20 tokens gave
    # 61.4 %, 50 64.2, 100 61.9 at 2-3x the time (docs/benchmarks.md, sweeps)
    "Prompt tuning 50": (lambda: tt.PromptTuningConfig(num_virtual_tokens=50, init="TEXT", tokenizer=str(tt_minilm()),
                                                       init_text="food good food bad service good service bad",
                                                       modules_to_save=["classifier"]), 1e-2),
    "P-tuning MLP 20": (lambda: tt.PTuningConfig(num_virtual_tokens=20, encoder_hidden_size=128,
                                                 modules_to_save=["classifier"]), 3e-3),
    # Li & Liang's init: the prefixes start as the encoder's own keys/values for the label words
    "Prefix tuning 20": (lambda: tt.PrefixTuningConfig(num_virtual_tokens=20, init="TEXT", tokenizer=str(tt_minilm()),
                                                       init_text="food good food bad service good service bad",
                                                       modules_to_save=["classifier"]), 3e-2),
    "Prefix tuning 20 + MLP": (lambda: tt.PrefixTuningConfig(num_virtual_tokens=20, projection=True, encoder_hidden_size=128,
                                                              modules_to_save=["classifier"]), 1e-3),
}


# ---- peft's implementation of the same methods, on the same model, loop, batches and lr ----
HEAD, QV = ["classifier"], ["query", "value"]
LABEL_WORDS = "food good food bad service good service bad"


def _peft_quality_configs(total_steps: int) -> dict[str, tuple[Callable, int, dict]]:
    """method -> (peft config factory, virtual tokens the head's pooling leaves out, extra options).
    Same settings as ``QUALITY`` where peft has them; peft's prefix tuning has no label-word init."""
    import peft

    lora = lambda **kw: peft.LoraConfig(r=8, lora_alpha=16, target_modules=QV, modules_to_save=HEAD, **kw)  # noqa: E731
    return {
        "LoRA r=8": (lora, 0, {}),
        "DoRA r=8": (lambda: lora(use_dora=True), 0, {}),
        "VeRA r=256": (lambda: peft.VeraConfig(r=256, target_modules=QV, modules_to_save=HEAD), 0, {}),
        "LoHa r=8": (lambda: peft.LoHaConfig(r=8, alpha=16, target_modules=QV, modules_to_save=HEAD), 0, {}),
        "LoKr r=8": (lambda: peft.LoKrConfig(r=8, alpha=16, target_modules=QV, modules_to_save=HEAD), 0, {}),
        "HRA r=8": (lambda: peft.HRAConfig(r=8, target_modules=QV, modules_to_save=HEAD), 0, {}),
        "HiRA r=32": (lambda: peft.HiraConfig(r=32, target_modules=QV, modules_to_save=HEAD), 0, {}),
        "SHiRA r=16": (lambda: peft.ShiraConfig(r=16, target_modules=QV, modules_to_save=HEAD), 0, {}),
        "IA3": (lambda: peft.IA3Config(modules_to_save=HEAD), 0, {}),  # peft's BERT defaults: key, value, output.dense
        "AdaLoRA 12->8": (lambda: peft.AdaLoraConfig(init_r=12, target_r=8, lora_alpha=16, tinit=20, tfinal=40, orth_reg_weight=0.1,
                                                     # peft refuses a schedule longer than the run (--quick's 2 steps)
                                                     total_step=max(total_steps, 61), target_modules=QV, modules_to_save=HEAD), 0, {"adalora": True}),
        "QLoRA NF4 r=8": (lora, 0, {"four_bit": "float32"}),
        "QLoRA NF4 r=8 bf16 compute": (lora, 0, {"four_bit": "bfloat16"}),
        "Prompt tuning 50": (lambda: peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=50, prompt_tuning_init="TEXT",
                                                             prompt_tuning_init_text=LABEL_WORDS,
                                                             tokenizer_name_or_path=str(tt_minilm())), 50, {}),
        "P-tuning MLP 20": (lambda: peft.PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=20, encoder_hidden_size=128), 20, {}),
        "Prefix tuning 20": (lambda: peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=20), 0, {}),
        "Prefix tuning 20 + MLP": (lambda: peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=20, prefix_projection=True,
                                                                   encoder_hidden_size=128), 0, {}),
    }


class _PeftMeanPool(nn.Module):
    """The demo's mean-pooling MiniLM as peft drives it: peft's prefix tuning hands ``past_key_values``
    and an attention mask lengthened by the prefix; the pooling reads the text's part of that mask. Its
    prompt methods prepend virtual tokens, which ``num_virtual_tokens`` leaves out of the pooling
    (what trimtune's hook does), so both libraries train the same head on the same representation."""

    def __init__(self, inner):
        super().__init__()
        self.encoder, self.classifier, self.dropout = inner.encoder, inner.classifier, inner.dropout

    @property
    def config(self):
        return self.encoder.config

    @property
    def device(self):
        return self.classifier.weight.device

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, past_key_values=None,
                num_virtual_tokens=0, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        from trimtune.models import mean_pool, text_positions

        kwargs = {k: v for k, v in kwargs.items() if k not in ("output_attentions", "output_hidden_states", "return_dict")}
        reference = input_ids if input_ids is not None else inputs_embeds
        if past_key_values is not None or num_virtual_tokens:  # the text keeps its own positions, as in trimtune
            kwargs["position_ids"] = text_positions(reference, num_virtual_tokens)
        if past_key_values is not None:
            kwargs["past_key_values"] = past_key_values
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs).last_hidden_state
        mask = attention_mask[:, -hidden.shape[1]:] if attention_mask is not None else None  # the prefix's ones are not text
        logits = self.classifier(self.dropout(mean_pool(hidden, mask, skip=num_virtual_tokens)))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class _Prompted(nn.Module):
    """peft's model, called with ``num_virtual_tokens`` (peft passes extra keywords on to the base model)."""

    def __init__(self, model, virtual: int):
        super().__init__()
        self.model, self.virtual = model, virtual

    def forward(self, **batch):
        return self.model(**batch, num_virtual_tokens=self.virtual) if self.virtual else self.model(**batch)


class _AdaLoraBudget:
    """peft's AdaLoRA rank update: after the optimizer step, before the gradients are cleared."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def after_optimizer_step(self, ctx) -> None:
        self.peft_model.base_model.update_and_allocate(ctx.step - 1)


def peft_quality_model(method: str, inner, total_steps: int):
    """(model to train, callbacks) with peft's ``method`` applied to ``inner`` (the demo classifier)."""
    import peft

    table = _peft_quality_configs(total_steps)
    if method not in table:
        raise KeyError(f"peft has no {method}")
    make, virtual, extra = table[method]
    base = _PeftMeanPool(inner)
    if extra.get("four_bit"):
        from _peft_parity import to_bnb_linear4bit

        to_bnb_linear4bit(base.encoder, tt.QuantConfig(compute_dtype=extra["four_bit"]), skip=())
    model = peft.get_peft_model(base, make())
    callbacks = [_AdaLoraBudget(model)] if extra.get("adalora") else []
    return _Prompted(model, virtual), callbacks


def quality(epochs: int, seeds: list[int], quick: bool, only=None, lr=None, side: str = "ours",
            reseed: bool = False) -> list[list[object]]:
    """The demo's recipe (MiniLM + mean-pooling head, AdamW, one warm-up epoch then linear decay) for
    every method, one run per split seed; ``lr`` overrides the table's learning rate (sweeps).
    ``side="peft"``: peft's implementation of the method instead (same model, loop, batches, lr).
    ``reseed``: seed torch's generator again just before training, so that both libraries draw the
    same dropout masks whatever random numbers their setup consumed."""
    from trimtune.data import DEMO_LABELS, demo_split, text_loader
    from trimtune.demo.lora_text import load_model, text_schedule

    rows = []
    for method, (make_config, default_lr) in QUALITY.items():
        if only and method not in only:
            continue
        if side == "peft" and method not in _peft_quality_configs(1):
            continue
        rate, accuracies, seconds = lr or default_lr, [], 0.0
        for seed in seeds:
            train, test = demo_split(seed=seed)
            if quick:
                train, test = train[:32], test[:32]
            torch.manual_seed(seed)
            tokenizer, model = load_model()
            loader = text_loader(train, tokenizer, DEMO_LABELS, 16, shuffle=True, seed=seed)
            callbacks = []
            if side == "peft":
                model, callbacks = peft_quality_model(method, model, epochs * len(loader))
            else:
                tt.apply(model, make_config())
            if reseed:
                torch.manual_seed(seed)
            result = tt.train(model, loader, epochs=epochs, lr=rate, scheduler=text_schedule(epochs, loader), callbacks=callbacks,
                              progress=False)
            accuracies.append(tt.evaluate(model, text_loader(test, tokenizer, DEMO_LABELS, 64), tt.accuracy)["accuracy"])
            seconds += result.wall_time
            print(f"{side} {method} lr {rate:g} seed {seed}: accuracy {accuracies[-1]:.3f} ({result.wall_time:.0f} s)", flush=True)
        mean = sum(accuracies) / len(accuracies)
        spread = f"{100 * mean:.1f} (min {100 * min(accuracies):.1f}, max {100 * max(accuracies):.1f})"
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append([method, trainable, rate, spread, " / ".join(f"{100 * a:.1f}" for a in accuracies),
                     seconds / len(seeds)])
    return rows


def selected(only: list[str] | None, skip: list[str]) -> list[int]:
    """Indices of the entries to run: those named in ``only`` (in that order, so a long run can
    start with what matters most) or all, minus ``skip``; names are method or method@model."""
    names = [{e.method, f"{e.method}@{e.model}"} for e in entries()]
    order = [i for name in only for i, n in enumerate(names) if name in n] if only else range(len(names))
    picked = list(dict.fromkeys(i for i in order if not names[i] & set(skip)))
    if only and not picked:
        raise SystemExit(f"--only matched no entry; entries are {sorted(set().union(*names))}")
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and data (a smoke run)")
    parser.add_argument("--small", action="store_true", help=f"smaller batches {SMALL_SHAPES} (a crowded machine)")
    parser.add_argument("--quality", action="store_true", help="demo accuracy per method instead of speed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="--quality: demo split seeds")
    parser.add_argument("--lr", type=float, help="--quality: one learning rate for the methods run (a sweep)")
    parser.add_argument("--side", choices=("ours", "peft"), default="ours", help="--quality: trimtune's methods or peft's")
    parser.add_argument("--reseed", action="store_true",
                        help="--quality: seed the generator again just before training (same dropout draws on both sides)")
    parser.add_argument("--only", nargs="*", help="entries to run, by method or method@model (default all); --quality: method names")
    parser.add_argument("--skip", nargs="*", default=[], help="entries not to run, by method or method@model")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--threads", type=int, default=_harness.THREADS, help="torch threads per variant")
    parser.add_argument("--step-only", action="store_true",
                        help="train step times only (no inference, no memory): a quick cross-check")
    args = parser.parse_args()
    _harness.THREADS = args.threads  # the memory children read it too
    set_threads()
    # in the memory children, library code must be loaded before the model-inclusive baseline is taken
    _harness.PRELOAD += ["bitsandbytes", "trimtune", "transformers.models.llama.modeling_llama",
                         "transformers.models.bert.modeling_bert"]
    if args.quality:
        rows = quality(1 if args.quick else args.epochs, args.seeds, args.quick, args.only, args.lr, args.side, args.reseed)
        print(markdown_table(["method", "trainable", "lr", "test accuracy % mean (min, max)", "per seed", "train s / run"], rows))
    else:
        rows = []
        size = "quick" if args.quick else "small" if args.small else "full"
        for i in selected(args.only, args.skip):
            rows.append(measure_or_report(i, size, args.rounds, args.step_only))
            print(json.dumps(rows[-1]), flush=True)
        print(f"peak memory: {memory_method()} per variant in a child process; (batch, seq) {shapes_for(size)}")
        print(step_table(rows) if args.step_only else speed_table(rows))
        print(qlora_summary(rows))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
