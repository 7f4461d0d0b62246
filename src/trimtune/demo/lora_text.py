"""Step: LoRA fine-tuning of all-MiniLM-L6-v2 on the shipped demo reviews, against a linear probe."""

from __future__ import annotations

import torch

from ..data import DEMO_LABELS, demo_split, text_loader
from ..deltas.lora import LoraConfig
from ..models import minilm_path
from .context import DemoContext, Step
from .linear_probe import linear_probe_accuracy, mean_pooled_embeddings

# lr 5e-3: at 1e-3 the run stalled at 48 % (below the 61.7 % probe); 5e-3 reached 68 % on the
# seed-0 split, 1e-2 diverged (docs/benchmarks.md, "demo"). Quick mode is for tests.
FULL = dict(epochs=12, lr=5e-3, batch_size=16, r=8, alpha=16)
QUICK = dict(epochs=1, lr=1e-3, batch_size=16, r=4, alpha=8, n_train=32, n_test=32)


def load_model():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(DEMO_LABELS),
        id2label=dict(enumerate(DEMO_LABELS)), label2id={name: i for i, name in enumerate(DEMO_LABELS)},
    )
    return tokenizer, model.eval()


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
    import trimtune as tt

    settings = QUICK if ctx.quick else FULL
    train, test, tokenizer, model, train_loader, test_loader = text_task(ctx, settings)
    ctx.detail(f"  data: {len(train)} train / {len(test)} test reviews, {len(DEMO_LABELS)} classes {DEMO_LABELS}")

    probe_train = mean_pooled_embeddings(model.base_model, text_loader(train, tokenizer, DEMO_LABELS, 64))
    probe = linear_probe_accuracy(probe_train, mean_pooled_embeddings(model.base_model, test_loader), tune=not ctx.quick)
    before = tt.evaluate(model, test_loader, tt.accuracy)["accuracy"]

    config = LoraConfig(r=settings["r"], alpha=settings["alpha"], targets="query|value", modules_to_save=["classifier"])
    tt.apply(model, config)
    trainable, total = tt.trainable_parameters(model)
    ctx.report(f"  LoRA r={config.r} on query/value + trained classifier head: "
               f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f} %)")

    result = tt.train(model, train_loader, epochs=settings["epochs"], lr=settings["lr"],
                      scheduler=tt.linear_schedule(), progress=not ctx.quiet)
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
