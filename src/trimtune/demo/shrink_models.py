"""Step: physically shrink two models and recover them by fine-tuning.

A LeNet on scikit-learn's digits loses half of its channels (traced dependency groups), is shrunk
and fine-tuned in full; all-MiniLM-L6-v2 loses a quarter of its attention heads and FFN units per
layer, is shrunk, and is recovered with LoRA on the demo reviews.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import trimtune as tt

from ..data import DEMO_LABELS, demo_split, text_loader
from ..data.digits import load_digits_split
from ..models import LeNet
from .context import DemoContext, Step
from .lora_text import FULL as LORA_SETTINGS
from .lora_text import load_model

FULL = dict(digits_epochs=15, recover_epochs=5, minilm_ratio=0.25, lora_epochs=12, n_train=None)
QUICK = dict(digits_epochs=2, recover_epochs=1, minilm_ratio=0.25, lora_epochs=1, n_train=32)


def _digits_accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model.eval()(x).argmax(1) == y).float().mean().item()


def _shrink_digits_cnn(ctx: DemoContext, settings: dict) -> dict:
    x_train, y_train, x_test, y_test = load_digits_split(seed=ctx.seed)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(ctx.seed))
    model = LeNet()
    tt.train(model, loader, epochs=settings["digits_epochs"], lr=3e-3, loss_fn=F.cross_entropy, progress=False)
    dense = _digits_accuracy(model, x_test, y_test)
    report = tt.shrink(model, 0.5, example_inputs=(x_test[:16],))
    shrunk = _digits_accuracy(model, x_test, y_test)
    tt.train(model, loader, epochs=settings["recover_epochs"], lr=1e-3, loss_fn=F.cross_entropy, progress=False)
    recovered = _digits_accuracy(model, x_test, y_test)
    ctx.detail("  " + report.table(max_indices=8).replace("\n", "\n  "))
    ctx.report(f"  digits LeNet, 50 % channels removed: params {report.params_before:,} -> {report.params_after:,}, "
               f"MACs {report.macs_before:,} -> {report.macs_after:,}")
    ctx.report(f"  accuracy dense {dense:.1%}, shrunk {shrunk:.1%}, after {settings['recover_epochs']} epochs of fine-tuning {recovered:.1%}")
    return dict(params_before=report.params_before, params_after=report.params_after, macs_before=report.macs_before,
                macs_after=report.macs_after, accuracy_dense=dense, accuracy_shrunk=shrunk, accuracy_recovered=recovered)


def _shrink_minilm(ctx: DemoContext, settings: dict) -> dict:
    train, test = demo_split(seed=ctx.seed)
    if settings["n_train"]:
        train, test = train[: settings["n_train"]], test[: settings["n_train"]]
    tokenizer, model = load_model()
    batch = tokenizer([row["text"] for row in test[:16]], padding=True, return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    report = tt.shrink(model, settings["minilm_ratio"], example_inputs=inputs)
    heads = sorted({w["heads"] for w in report.widths["layers"]})
    ffn = sorted({w["ffn"] for w in report.widths["layers"]})
    ctx.report(f"  all-MiniLM-L6-v2, {settings['minilm_ratio']:.0%} of heads and FFN units removed per layer: "
               f"heads 12 -> {heads}, FFN 1536 -> {ffn}; params {report.params_before:,} -> {report.params_after:,}, "
               f"MACs {report.macs_before:,} -> {report.macs_after:,}")
    train_loader = text_loader(train, tokenizer, DEMO_LABELS, 16, shuffle=True, seed=ctx.seed)
    test_loader = text_loader(test, tokenizer, DEMO_LABELS, 64)
    tt.apply(model, tt.LoraConfig(r=8, alpha=16, targets="query|value", modules_to_save=["classifier"]))
    start = time.perf_counter()
    tt.train(model, train_loader, epochs=settings["lora_epochs"], lr=LORA_SETTINGS["lr"], scheduler=tt.linear_schedule(), progress=not ctx.quiet)
    accuracy = tt.evaluate(model, test_loader, tt.accuracy)["accuracy"]
    full_size = ctx.results.get("lora_text", {}).get("accuracy_after")
    versus = f" (full-size model with LoRA: {full_size:.1%})" if full_size is not None else ""
    ctx.report(f"  shrunk MiniLM recovered with LoRA: accuracy {accuracy:.1%}{versus}, {time.perf_counter() - start:.1f} s")
    return dict(params_before=report.params_before, params_after=report.params_after, macs_before=report.macs_before,
                macs_after=report.macs_after, accuracy_lora=accuracy)


def run(ctx: DemoContext) -> None:
    settings = QUICK if ctx.quick else FULL
    torch.manual_seed(ctx.seed)
    ctx.results["shrink"] = dict(digits=_shrink_digits_cnn(ctx, settings), minilm=_shrink_minilm(ctx, settings))


STEP = Step("shrink", "Physical shrink and recovery (digits LeNet; all-MiniLM-L6-v2 with LoRA)", run)
