"""Step: LoRA fine-tuning of all-MiniLM-L6-v2 on the shipped demo reviews, against a linear probe."""

from __future__ import annotations

import torch

import trimtune as tt

from ..data import DEMO_LABELS, demo_split, text_loader
from ..models import minilm_classifier, minilm_path
from .context import DemoContext, Step
from .linear_probe import linear_probe_accuracy, mean_pooled_embeddings

# With the mean-pooling head, lr 1e-3 beats the probe on the split seeds 0, 1, 2 by 11-14 points
# (2e-3 and 5e-3 no better; docs/benchmarks.md, "Demo task"). Quick mode is for tests.
FULL = dict(epochs=12, lr=1e-3, batch_size=16, r=8, alpha=16)
QUICK = dict(epochs=1, lr=1e-3, batch_size=16, r=4, alpha=8, n_train=32, n_test=32)


def text_schedule(epochs: int, loader):
    """The text recipe's schedule, for every method and phase: one warm-up epoch (when there is more
    than one epoch), then linear decay to 0."""

    return tt.linear_schedule(len(loader) if epochs > 1 else 0)


def load_model():
    """The tokenizer and MiniLM with a mean-pooling head (the pooling the probe uses; see ``MeanPoolClassifier``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path()), minilm_classifier(len(DEMO_LABELS))


def text_task(ctx: DemoContext, settings: dict):
    """The demo reviews (cut down in quick mode) and a fresh MiniLM classifier: what every text step starts from.
    Returns (train, test, tokenizer, model, train_loader, test_loader)."""
    torch.manual_seed(ctx.seed)
    train, test = demo_split(seed=ctx.seed)
    if ctx.quick:
        train, test = train[: settings["n_train"]], test[: settings["n_test"]]
    tokenizer, model = load_model()
    train_loader = text_loader(train, tokenizer, DEMO_LABELS, settings["batch_size"], shuffle=True, seed=ctx.seed)
    return train, test, tokenizer, model, train_loader, text_loader(test, tokenizer, DEMO_LABELS, 64)


def run(ctx: DemoContext) -> None:
    settings = QUICK if ctx.quick else FULL
    train, test, tokenizer, model, train_loader, test_loader = text_task(ctx, settings)
    ctx.detail(f"  data: {len(train)} train / {len(test)} test reviews, {len(DEMO_LABELS)} classes {DEMO_LABELS}")

    probe_train = mean_pooled_embeddings(model.encoder, text_loader(train, tokenizer, DEMO_LABELS, 64))
    probe = linear_probe_accuracy(probe_train, mean_pooled_embeddings(model.encoder, test_loader), tune=not ctx.quick)
    before = tt.evaluate(model, test_loader, tt.accuracy)["accuracy"]

    config = tt.LoraConfig(r=settings["r"], alpha=settings["alpha"], targets="query|value", modules_to_save=["classifier"])
    tt.apply(model, config)
    trainable, total = tt.trainable_parameters(model)
    ctx.report(f"  LoRA r={config.r} on query/value + trained classifier head: "
               f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f} %)")

    result = tt.train(model, train_loader, epochs=settings["epochs"], lr=settings["lr"],
                      scheduler=text_schedule(settings["epochs"], train_loader), progress=not ctx.quiet)
    seconds = result.wall_time
    after = tt.evaluate(model, test_loader, tt.accuracy)["accuracy"]
    saved = tt.save_adapter(model, ctx.out_dir / "lora_adapter")

    ctx.report(f"  accuracy before fine-tuning (random head):  {before:.1%}")
    ctx.report(f"  linear probe on frozen MiniLM embeddings:   {probe:.1%}")
    ctx.report(f"  accuracy after LoRA fine-tuning:            {after:.1%}")
    ctx.report(f"  training time: {seconds:.1f} s ({settings['epochs']} epochs); adapter saved in {saved}")
    ctx.results["lora_text"] = dict(
        trainable=trainable, total=total, probe_accuracy=probe, accuracy_before=before,
        accuracy_after=after, train_seconds=seconds, adapter_dir=str(saved),
    )


STEP = Step("lora_text", "LoRA fine-tuning of all-MiniLM-L6-v2 on the demo reviews", run)
