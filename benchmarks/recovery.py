"""Recovering a pruned MiniLM on the demo reviews, with and without distillation from the dense model.

Per split seed: the dense model is all-MiniLM-L6-v2 (mean pooling) tuned with LoRA (r=8, query|value,
classifier trained), 12 epochs — the demo's setting. It is merged; that dense model is both the
teacher and where every pruned student starts:

- shrink 25 % / 50 % of heads and FFN units per layer, removed for real, chosen by group magnitude
  (``shrink``'s default) or, "activation-aware", by Wanda scores summed per head and per FFN unit
  (``prune`` with head / column granularity and the calibration batches' input norms, then
  ``shrink(from_masks=True)``);
- 2:4 on every encoder Linear by Wanda or by SparseGPT (the sequential pipeline, which also updates
  the kept weights), then LoRA with ``follow_mask`` (stays 2:4);

each recovered by LoRA (same settings) with plain task loss, with distillation (KL at T=2,
alpha=0.5, from the dense model), or with distillation on a transfer set: the KL also covers one
perturbed copy of each batch (30 % of its tokens swapped, ``DistillConfig.augment``) that the
teacher labels. Calibration data comes from the training reviews only, the same
for every student of a seed: the first 8 batches of an unshuffled loader (Wanda, activation-aware
shrink) and 32 windows of 128 tokens of the concatenated training texts (SparseGPT).

Also times a distillation step against a plain step (same batch, 2 threads unless --threads) and
reports peak RSS of each in a fresh child.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/recovery.py --threads 1 --seeds 0 1 2 3 4
    ... --quick                          # seconds: 32 examples, 1 epoch
    ... --step-only                      # only the step time / memory comparison
    ... --only "shrink 50 %" ...         # some students only (names as in STUDENTS)
    ... --variants augmented             # some recoveries only (names as in RECOVERIES)
    ... --variants distill augmented --distill alpha=0.2   # other distillation settings (named in the results)
    ... --validate                       # scores on a fifth of the training reviews held out: for choosing settings
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _harness import markdown_table, peak_memory_mb, set_threads  # noqa: E402

import trimtune as tt  # noqa: E402
from trimtune.data import DEMO_LABELS, demo_split, text_loader  # noqa: E402
from trimtune.prune import PruneConfig, Wanda, collect_input_norms, prune  # noqa: E402
from trimtune.prune.sequential import SequentialConfig, prune_sequential  # noqa: E402

LORA = dict(r=8, alpha=16, targets="query|value", modules_to_save=["classifier"])
DISTILL = dict(alpha=0.5, temperature=2.0)
# how each student recovers: the label's suffix and the distillation settings (None: plain task loss)
RECOVERIES = {"plain": ("", None), "distill": (" + distill", dict(DISTILL)), "augmented": (" + distill, augmented", {**DISTILL, "augment": 0.3})}
ENCODER_LINEARS = r"encoder\.layer\.\d+\..*(query|key|value|dense)$"  # every Linear of the 6 blocks
HEAD_LINEARS = r"layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)$"  # a head's rows and columns
FFN_OUT = r"layer\.\d+\.output\.dense$"  # an FFN unit is one input column of the down projection


class Data:
    """One split seed's loaders, and its calibration data (from the training reviews only)."""

    def __init__(self, seed: int, quick: bool, validate: bool = False):
        from transformers import AutoTokenizer

        from trimtune.models import minilm_path

        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        train, test = demo_split(seed=seed)
        if validate:  # choosing settings: hold out a fifth of the training reviews, never look at the test set
            train, test = validation_split(train)
        if quick:
            train, test = train[:32], test[:32]
        self.loader = text_loader(train, tokenizer, DEMO_LABELS, 16, shuffle=True, seed=seed)
        self.test = text_loader(test, tokenizer, DEMO_LABELS, 64)
        fixed = text_loader(train, tokenizer, DEMO_LABELS, 16)  # unshuffled: the same batches for every student
        self.batches = [{k: v for k, v in b.items() if k != "labels"} for b, _ in zip(fixed, range(8))]
        ids = torch.tensor(tokenizer("\n".join(r["text"] for r in train), add_special_tokens=False, verbose=False)["input_ids"])
        starts = torch.randint(0, len(ids) - 128 + 1, (32,), generator=torch.Generator().manual_seed(seed))
        self.windows = torch.stack([ids[s:s + 128] for s in starts.tolist()])


def validation_split(train: list[dict], fraction: float = 0.2) -> tuple[list[dict], list[dict]]:
    """(rest, validation): the first ``fraction`` of each label's training reviews (already shuffled
    by the split seed) held out, the rest in their order."""
    held = set()
    for label in DEMO_LABELS:
        members = [i for i, r in enumerate(train) if r["label"] == label]
        held.update(members[:round(len(members) * fraction)])
    return [r for i, r in enumerate(train) if i not in held], [r for i, r in enumerate(train) if i in held]


def tune(model, loader, test, epochs: int, teacher=None, distill=None) -> float:
    """LoRA (follow_mask on pruned layers) for ``epochs``, distilling from ``teacher`` when given."""
    tt.apply(model, tt.LoraConfig(**LORA, follow_mask=True))
    callbacks = [tt.Distiller(model, teacher, tt.DistillConfig(**distill))] if teacher is not None else []
    tt.train(model, loader, epochs=epochs, lr=1e-3, scheduler=tt.linear_schedule(), callbacks=callbacks, progress=False)
    return tt.evaluate(model, test, tt.accuracy)["accuracy"]


def dense_model(loader, test, epochs: int):
    from trimtune.models import minilm_classifier

    model = minilm_classifier(len(DEMO_LABELS))
    accuracy = tune(model, loader, test, epochs)
    tt.merge(model)
    return tt.unload(model, merge_adapters=True).eval(), accuracy


def shrunk(dense, ratio: float, data: Data):
    model = copy.deepcopy(dense)
    tt.shrink(model, ratio, example_inputs=data.batches[0], measure=False)
    return model


def shrunk_by_activations(dense, ratio: float, data: Data):
    """Heads and FFN units chosen by their summed Wanda scores (|W| times the input norm), not magnitude."""
    model = copy.deepcopy(dense)
    norms = collect_input_norms(model, data.batches, targets=f"{HEAD_LINEARS}|{FFN_OUT}")
    prune(model, PruneConfig(amount=ratio, importance=Wanda(norms), granularity="heads", targets=HEAD_LINEARS))
    prune(model, PruneConfig(amount=ratio, importance=Wanda(norms), granularity="columns", targets=FFN_OUT))
    tt.shrink(model, from_masks=True, measure=False)
    return model


def two_four(dense, data: Data):
    model = copy.deepcopy(dense)
    norms = collect_input_norms(model, data.batches, targets=ENCODER_LINEARS)
    prune(model, PruneConfig(amount=0.5, importance=Wanda(norms), granularity="2:4", targets=ENCODER_LINEARS))
    return model


def two_four_sparsegpt(dense, data: Data):
    model = copy.deepcopy(dense)
    prune_sequential(model, data.windows, SequentialConfig(method="sparsegpt", sparsity="2:4"))
    return model


STUDENTS = {
    "shrink 25 %": lambda dense, data: shrunk(dense, 0.25, data),
    "shrink 50 %": lambda dense, data: shrunk(dense, 0.5, data),
    "shrink 50 %, activation-aware": lambda dense, data: shrunk_by_activations(dense, 0.5, data),
    "Wanda 2:4": two_four,
    "SparseGPT 2:4": two_four_sparsegpt,
}


def one_seed(seed: int, epochs: int, quick: bool, only=None, recoveries=tuple(RECOVERIES), validate: bool = False) -> dict:
    torch.manual_seed(seed)
    data = Data(seed, quick, validate)
    dense, dense_acc = dense_model(data.loader, data.test, epochs)
    results = {"dense LoRA": dense_acc}
    for name, make in STUDENTS.items():
        if only and name not in only:
            continue
        for recovery in recoveries:
            suffix, distill = RECOVERIES[recovery]
            torch.manual_seed(seed)
            start = time.perf_counter()
            student = make(dense, data)
            label = name + suffix
            if distill is None:
                results[f"{name} (before recovery)"] = tt.evaluate(student, data.test, tt.accuracy)["accuracy"]
            results[label] = tune(student, data.loader, data.test, epochs, teacher=dense if distill else None, distill=distill)
            print(f"seed {seed} {label}: {results[label]:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return results


def step_costs(threads: int, rounds: int = 9) -> dict:
    """Median wall time of a plain LoRA step and a distillation step on the same batch (MiniLM, 16 x 64),
    interleaved round by round so a shared machine's load falls on both alike."""
    from trimtune.models import minilm_classifier

    torch.manual_seed(0)
    set_threads(threads)
    teacher = minilm_classifier(len(DEMO_LABELS)).eval()
    steps = {variant: make_step(variant, teacher) for variant in VARIANT_STEPS}
    for step in steps.values():
        step(), step()  # warm-up
    times = {variant: [] for variant in steps}
    for _ in range(rounds):
        for variant, step in steps.items():
            start = time.perf_counter()
            step()
            times[variant].append(time.perf_counter() - start)
    out = {f"{v}_ms": 1000 * statistics.median(t) for v, t in times.items()}
    for variant in VARIANT_STEPS[1:]:
        out[f"{variant}_ratio"] = out[f"{variant}_ms"] / out["plain_ms"]
    return out


# distill: the teacher runs every step (the first epoch); distill-cached: its logits for this batch are
# cached (every later epoch of a classification run); augmented: cached, plus one perturbed copy the
# student and the teacher both run (every epoch: copies are never cached)
VARIANT_STEPS = ("plain", "distill", "distill-cached", "augmented")


def make_step(variant: str, teacher):
    """One optimizer step of LoRA on MiniLM, plain or with logit distillation from ``teacher`` (on the
    batch, or on the batch and one perturbed copy of it)."""
    from trimtune.training.batches import run_batch

    model = copy.deepcopy(teacher)
    tt.apply(model, tt.LoraConfig(**LORA))
    settings = RECOVERIES["augmented" if variant == "augmented" else "distill"][1]
    config = tt.DistillConfig(**settings, cache_teacher=variant != "distill")
    distiller = tt.Distiller(model, teacher, config) if variant != "plain" else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 20000, (16, 64), generator=g), "attention_mask": torch.ones(16, 64, dtype=torch.long),
             "labels": torch.randint(0, 4, (16,), generator=g)}

    def step():
        output = run_batch(model.train(), batch)
        loss = output.loss + (distiller.distill_term(batch, output) if distiller else 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def build_step(variant: str):  # module level: runs in the memory child
    from trimtune.models import minilm_classifier

    torch.manual_seed(0)
    return make_step(variant, minilm_classifier(len(DEMO_LABELS)).eval())


def peak_memory(threads: int) -> dict:
    """Per variant, in a fresh child: (peak RSS growth over 3 steps, the peak including the model(s))."""
    import _harness

    _harness.THREADS = threads
    _harness.PRELOAD += ["trimtune", "transformers.models.bert.modeling_bert"]
    out = {}
    for variant in VARIANT_STEPS:
        growth, total = peak_memory_mb(build_step, variant, calls=3, with_model=True)
        out[f"{variant}_peak_growth_mb"], out[f"{variant}_peak_with_models_mb"] = growth, total
    return out


def summary(per_seed: dict[int, dict], scored_on: str = "test") -> str:
    rows = []
    names = [n for n in next(iter(per_seed.values()))]
    for name in names:
        values = [100 * r[name] for r in per_seed.values()]
        rows.append([name, f"{statistics.mean(values):.1f}", f"{min(values):.1f} – {max(values):.1f}", " ".join(f"{v:.1f}" for v in values)])
    return markdown_table(["variant", f"{scored_on} accuracy % mean", "min – max", "per seed " + ",".join(map(str, per_seed))], rows)


def override_distillation(pairs: list[str]) -> None:
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in tt.DistillConfig.__dataclass_fields__ or not value:
            raise SystemExit(f"--distill: expected KEY=VALUE with a DistillConfig field, got {pair!r}")
        value = int(value) if value.isdigit() else float(value)
        for recovery in ("distill", "augmented") if key != "augment" else ("augmented",):
            suffix, settings = RECOVERIES[recovery]
            settings[key] = value
            RECOVERIES[recovery] = (f"{suffix}, {key}={value}", settings)  # results of other settings keep their own names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--step-only", action="store_true")
    parser.add_argument("--json", help="write the per-seed results here")
    parser.add_argument("--only", nargs="*", help=f"students to run (default all): {', '.join(STUDENTS)}")
    parser.add_argument("--variants", nargs="+", choices=list(RECOVERIES), default=list(RECOVERIES), help="recoveries to run (default all)")
    parser.add_argument("--validate", action="store_true", help="train on 80 %% of the training reviews, report accuracy on the other 20 %% "
                        "(to choose settings without the test set)")
    parser.add_argument("--distill", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override distillation settings of the distill and augmented recoveries, e.g. temperature=4 augment=0.15")
    args = parser.parse_args()
    set_threads(args.threads)
    unknown = set(args.only or ()) - set(STUDENTS)
    if unknown:
        raise SystemExit(f"--only: no student named {sorted(unknown)}; students are {list(STUDENTS)}")
    if args.step_only:
        costs = step_costs(args.threads)
        costs.update(peak_memory(args.threads))
        print(json.dumps(costs, indent=1))
        return
    override_distillation(args.distill)
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = one_seed(seed, 1 if args.quick else args.epochs, args.quick, args.only, args.variants, args.validate)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(per_seed, f, indent=1)
    print(summary(per_seed, "validation" if args.validate else "test"))


if __name__ == "__main__":
    main()
