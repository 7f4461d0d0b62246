"""LoRA speed and memory: trimtune vs Hugging Face peft, side by side in one run.

Cases: all-MiniLM-L6-v2 (sequence classification, batch 16, seq 128; r=8 on query/value and on
all linear layers) and a random Llama (hidden 512, 8 layers, 8 heads / 4 kv heads, seq 256,
batch 4; r=16 on q/v). Training variants: full fine-tuning, peft LoRA, trimtune LoRA (identical
factors, copied from peft): one step = forward + backward + AdamW step. Inference variants: the
plain base model, peft unmerged, trimtune unmerged, trimtune merged.

Times are medians of interleaved rounds in this process (see ``_harness``); peak memory is the RSS
growth of a few training steps, each variant in its own child process.

    PYTHONPATH=src python benchmarks/lora_vs_peft.py            # full run, writes docs/benchmarks.md
    PYTHONPATH=src python benchmarks/lora_vs_peft.py --quick    # tiny configs, seconds, prints only
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no load reports for the fresh classifier head
warnings.filterwarnings("ignore", category=FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness  # noqa: E402
import torch  # noqa: E402

import trimtune as tt  # noqa: E402
from trimtune.models import minilm_path  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- lora_vs_peft:begin -->", "<!-- lora_vs_peft:end -->"
COMMAND = "PYTHONPATH=src python benchmarks/lora_vs_peft.py"


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # "minilm", "llama" or the tiny "bert" / "tiny-llama" of --quick
    targets: str | list[str]  # the same spec is given to peft and trimtune
    r: int
    batch: int
    seq: int
    dropout: float = 0.1


FULL_CASES = [
    Case("MiniLM-L6 q,v r=8", "minilm", ["query", "value"], 8, 16, 128),
    # every linear layer but the classifier (peft's "all-linear" would also take the classifier)
    Case("MiniLM-L6 all-linear r=8", "minilm", ["query", "key", "value", "dense"], 8, 16, 128),
    Case("Llama 512x8 q,v r=16", "llama", ["q_proj", "v_proj"], 16, 4, 256),
]
QUICK_CASES = [
    Case("tiny BERT q,v r=4", "bert", ["query", "value"], 4, 2, 16),
    Case("tiny Llama q,v r=4", "tiny-llama", ["q_proj", "v_proj"], 4, 2, 16),
]
TRAIN_VARIANTS = ("full", "peft", "trimtune")  # peak memory is measured for these
INFER_VARIANTS = ("base", "peft", "trimtune", "trimtune merged")


# ---- models and inputs (module level: the memory children rebuild them by name) ----
def base_model(kind: str):
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    if kind == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    if kind == "bert":
        config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
        return BertForSequenceClassification(config)
    sizes = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, intermediate_size=1376, vocab_size=8192)
    if kind == "tiny-llama":
        sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, vocab_size=100)
    return LlamaForCausalLM(LlamaConfig(**sizes, max_position_embeddings=512, pad_token_id=0))


def batch_for(case: Case, model) -> dict:
    generator = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (case.batch, case.seq), generator=generator)
    if case.model in ("llama", "tiny-llama"):
        return {"input_ids": ids, "labels": ids}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (case.batch,), generator=generator)}


def peft_version(case: Case, base):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=case.r, lora_alpha=2 * case.r, lora_dropout=case.dropout, target_modules=case.targets)
    return get_peft_model(base, config)


def trimtune_version(case: Case, base, factors_from=None):
    tt.apply(base, tt.LoraConfig(r=case.r, alpha=2 * case.r, dropout=case.dropout, targets=case.targets))
    if factors_from is not None:  # the very same factors as peft's, so both train the same thing
        peft_inner = factors_from.base_model.model
        with torch.no_grad():
            for name, layer in tt.core.state.layers(base):
                twin = peft_inner.get_submodule(name)
                layer.deltas["default"].lora_A.copy_(twin.lora_A["default"].weight)
                layer.deltas["default"].lora_B.copy_(twin.lora_B["default"].weight)
    return base


def variant_model(case: Case, variant: str, base=None, peft_model=None):
    """A fresh copy of the base model turned into ``variant``."""
    model = copy.deepcopy(base) if base is not None else base_model(case.model)
    if variant == "peft":
        return peft_version(case, model)
    if variant.startswith("trimtune"):
        model = trimtune_version(case, model, peft_model)
        if variant == "trimtune merged":
            tt.merge(model)
        return model
    if variant == "floor":
        freeze_to_floor(model)
    return model  # "full" and "base": the plain model


def freeze_to_floor(model) -> None:
    """Every weight frozen, but the backward pass still runs down to the embeddings' output:
    the work any LoRA implementation must do before its own branches cost anything."""
    for param in model.parameters():
        param.requires_grad_(False)
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: out.requires_grad_(True))


def train_step(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None
    model.train()

    def step():
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        if optimizer is not None:
            optimizer.step()

    return step


def inference(model, batch):
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def run():
        with torch.inference_mode():
            model(**inputs)

    return run


def build_train_step(case: Case, variant: str):
    """Child-process entry for the memory measurement: the loaded model is the baseline."""
    model = variant_model(case, variant)
    return train_step(model, batch_for(case, model))


# ---- one case ----
def measure(case: Case, rounds: int, warmup: int) -> dict:
    base = base_model(case.model)
    batch = batch_for(case, base)
    peft_model = variant_model(case, "peft", base)
    models = {"peft": peft_model}
    for variant in ("trimtune", "trimtune merged"):
        models[variant] = variant_model(case, variant, base, peft_model)
    check_same_trainable(case, peft_model, models["trimtune"])
    train_models = {
        "full": variant_model(case, "full", base), "floor": variant_model(case, "floor", base),
        "peft": peft_model, "trimtune": models["trimtune"],
    }
    train = _harness.time_variants({v: train_step(m, batch) for v, m in train_models.items()}, rounds, warmup)
    infer_models = {"base": base, **models}
    infer = _harness.time_variants({v: inference(m, batch) for v, m in infer_models.items()}, rounds, warmup)
    memory = {v: _harness.peak_memory_mb(build_train_step, case, v) for v in TRAIN_VARIANTS}
    return {"train": train, "infer": infer, "memory": memory}


def check_same_trainable(case: Case, peft_model, trimtune_model) -> None:
    ours, theirs = tt.trainable_parameters(trimtune_model)[0], peft_model.get_nb_trainable_parameters()[0]
    if ours != theirs:
        raise RuntimeError(f"{case.name}: trimtune trains {ours} parameters, peft {theirs}; the comparison would be unfair")


# ---- report ----
def tables(results: dict[str, dict]) -> str:
    train_rows, infer_rows = [], []
    for name, res in results.items():
        t, m = res["train"], res["memory"]
        train_rows.append([
            name, t["full"].median_ms, t["floor"].median_ms, t["peft"].median_ms, t["trimtune"].median_ms,
            _harness.ratio(t["trimtune"], t["peft"]), _harness.ratio(t["trimtune"], t["peft"], cpu=True),
            _harness.ratio(t["floor"], t["peft"], cpu=True), _harness.ratio(t["peft"], t["full"]),
            m["full"], m["peft"], m["trimtune"], max(x.spread_pct for x in t.values()),
        ])
        i = res["infer"]
        infer_rows.append([
            name, i["base"].median_ms, i["peft"].median_ms, i["trimtune"].median_ms, i["trimtune merged"].median_ms,
            _harness.ratio(i["trimtune"], i["peft"]), _harness.ratio(i["trimtune"], i["peft"], cpu=True),
            _harness.ratio(i["trimtune merged"], i["base"]), _harness.ratio(i["trimtune merged"], i["base"], cpu=True),
            max(x.spread_pct for x in i.values()),
        ])
    train_table = _harness.markdown_table(
        ["case", "full FT ms", "floor ms", "peft ms", "trimtune ms", "trimtune/peft", "(CPU)", "floor/peft (CPU)",
         "peft/full", "full FT peak MiB", "peft peak MiB", "trimtune peak MiB", "noise ±%"],
        train_rows,
    )
    infer_table = _harness.markdown_table(
        ["case", "base ms", "peft unmerged ms", "trimtune unmerged ms", "trimtune merged ms",
         "unmerged trimtune/peft", "(CPU)", "merged trimtune/base", "(CPU)", "noise ±%"],
        infer_rows,
    )
    return f"Training step (forward + backward + AdamW):\n\n{train_table}\n\nInference (no grad):\n\n{infer_table}\n"


def conditions(rounds: int, warmup: int) -> str:
    import peft
    import transformers

    load = os.getloadavg()
    return (
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared; load average {load[0]:.1f} at the end), torch {torch.__version__} with "
        f"{_harness.THREADS} threads, transformers {transformers.__version__}, peft {peft.__version__}, fp32; "
        f"median of {rounds} interleaved rounds after {warmup} warm-up; peak memory = {_harness.memory_method()} "
        "growth over the loaded model during 2 training steps, each variant in its own process; "
        "LoRA dropout 0.1, alpha = 2r, trimtune's factors copied from peft's."
    )


def write_doc(text: str) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (other benchmarks keep theirs)."""
    old = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    section = f"{BEGIN}\n{text}{END}"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + section + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(new)
    os.replace(tmp, DOC)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs, 2 rounds; prints, writes nothing")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per variant (default 11, quick 2)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--case", default="", help="only the cases whose name contains this text")
    parser.add_argument("--threads", type=int, default=_harness.THREADS, help="intra-op threads, same for every variant")
    args = parser.parse_args(argv)
    _harness.THREADS = args.threads  # the memory children get the same count
    _harness.set_threads()
    rounds = args.rounds or (2 if args.quick else 11)
    warmup = 1 if args.quick else 2
    cases = [c for c in (QUICK_CASES if args.quick else FULL_CASES) if args.case in c.name]
    results = {}
    for case in cases:
        results[case.name] = measure(case, rounds, warmup)
        print(tables(results), flush=True)  # partial results survive an interrupted run
    report = f"{tables(results)}\nConditions: {conditions(rounds, warmup)}\n"
    print(f"Conditions: {conditions(rounds, warmup)}")
    if not (args.quick or args.no_write):
        write_doc(f"## LoRA: trimtune vs peft\n\nCommand: `{COMMAND}`\n\n{report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
