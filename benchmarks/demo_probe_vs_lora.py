"""Is the demo task one where fine-tuning beats a frozen encoder? Several linear probes vs LoRA.

Probes: logistic regression (C by 5-fold CV on the training split) on frozen all-MiniLM-L6-v2
features: mean-pooled last layer (how the model embeds sentences), the same L2-normalised, [CLS],
and the mean-pooled concatenation of the last 4 layers. LoRA: the demo's model (MiniLM + mean-pooling
head, ``trimtune.models.MeanPoolClassifier``) and settings, test accuracy every 2 epochs. Repeated
over split seeds; the last lines give mean ± sd over the seeds and whether LoRA beat every probe on
every seed. Usage:

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/demo_probe_vs_lora.py [--seeds 0 1 2] [--epochs 12] [--lr 1e-3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import trimtune as tt
from trimtune.data import DEMO_LABELS, demo_split, text_loader
from trimtune.demo.linear_probe import linear_probe_accuracy
from trimtune.demo.lora_text import FULL, load_model, text_schedule
from trimtune.models import mean_pool


@torch.no_grad()
def probe_features(encoder, loader) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    feats: dict[str, list] = {"mean": [], "mean_l2": [], "cls": [], "mean_last4": []}
    labels = []
    for batch in loader:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        hidden = encoder(**inputs, output_hidden_states=True).hidden_states
        pool = lambda h: mean_pool(h, batch["attention_mask"])  # noqa: E731
        mean = pool(hidden[-1])
        feats["mean"].append(mean)
        feats["mean_l2"].append(torch.nn.functional.normalize(mean, dim=-1))
        feats["cls"].append(hidden[-1][:, 0])
        feats["mean_last4"].append(torch.cat([pool(h) for h in hidden[-4:]], dim=-1))
        labels.append(batch["labels"])
    y = torch.cat(labels).numpy()
    return {k: (torch.cat(v).numpy(), y) for k, v in feats.items()}


class PrintEval:
    def on_eval(self, ctx, step, metrics):
        print(f"# epoch {ctx.epoch + 1} step {step}: test accuracy {metrics['accuracy']:.4f}", flush=True)


def run(seed: int, epochs: int, lr: float) -> dict:
    torch.manual_seed(seed)
    train, test = demo_split(seed=seed)
    tokenizer, model = load_model()
    train_eval = text_loader(train, tokenizer, DEMO_LABELS, 64)
    test_loader = text_loader(test, tokenizer, DEMO_LABELS, 64)
    tr, te = probe_features(model.encoder, train_eval), probe_features(model.encoder, test_loader)
    probes = {}
    for name in tr:
        probes[name] = linear_probe_accuracy(tr[name], te[name])
        print(f"# seed {seed} probe {name}: {probes[name]:.4f}", flush=True)
    tt.apply(model, tt.LoraConfig(r=FULL["r"], alpha=FULL["alpha"], targets="query|value", modules_to_save=["classifier"]))
    loader = text_loader(train, tokenizer, DEMO_LABELS, FULL["batch_size"], shuffle=True, seed=seed)
    result = tt.train(model, loader, epochs=epochs, lr=lr, scheduler=text_schedule(epochs, loader),
                      eval_data=test_loader, eval_every=2 * len(loader), metric=tt.accuracy, progress=False,
                      callbacks=[PrintEval()])
    curve = [round(m["accuracy"], 4) for _, m in result.eval_history]
    return {"seed": seed, "probes": probes, "lora_curve": curve, "train_seconds": result.wall_time}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=FULL["epochs"])
    parser.add_argument("--lr", type=float, default=FULL["lr"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = []
    for seed in args.seeds:
        start = time.perf_counter()
        results.append(run(seed, args.epochs, args.lr))
        print(json.dumps(results[-1]), f"# {time.perf_counter() - start:.0f} s", flush=True)
    summarise(results, args.lr)


def summarise(results: list[dict], lr: float) -> None:
    def stats(values):
        return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1 if len(values) > 1 else 0):.1f}"

    for name in results[0]["probes"]:
        print(f"probe {name:10s}: {stats([r['probes'][name] for r in results])} (n={len(results)})")
    final = [r["lora_curve"][-1] for r in results]
    print(f"LoRA lr {lr:g}   : {stats(final)} (n={len(results)}); per seed {final}")
    beats = all(r["lora_curve"][-1] > max(r["probes"].values()) for r in results)
    print(f"LoRA above every probe on every seed: {beats}")


if __name__ == "__main__":
    main()
