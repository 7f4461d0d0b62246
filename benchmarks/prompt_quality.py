"""Quality check for the input-side methods: fine-tune all-MiniLM-L6-v2 on the shipped demo reviews
with prompt tuning, P-tuning (MLP) and prefix tuning (with and without the reparameterisation MLP),
each with a trained classifier head, against LoRA with the demo's settings; test accuracy per method.

The prompt parameters get their own (larger) learning rate, as is usual for these methods; the head
and LoRA use the demo's 1e-3. Usage:

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/prompt_quality.py [--seeds 0 1] [--epochs 12]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import trimtune as tt
from trimtune.data import DEMO_LABELS, demo_split, text_loader
from trimtune.demo.lora_text import FULL, load_model

HEAD = ["classifier"]
METHODS = {  # name -> (config, learning rate of the adapter's own parameters)
    "LoRA r=8 (reference)": (tt.LoraConfig(r=FULL["r"], alpha=FULL["alpha"], targets="query|value", modules_to_save=HEAD), FULL["lr"]),
    "prompt tuning (20 tokens)": (tt.PromptTuningConfig(num_virtual_tokens=20, modules_to_save=HEAD), 3e-2),
    "P-tuning MLP (20 tokens)": (tt.PTuningConfig(num_virtual_tokens=20, encoder_hidden_size=128, modules_to_save=HEAD), 3e-3),
    "prefix tuning (20 tokens)": (tt.PrefixTuningConfig(num_virtual_tokens=20, modules_to_save=HEAD), 3e-2),
    "prefix tuning + MLP (20 tokens)": (
        tt.PrefixTuningConfig(num_virtual_tokens=20, projection=True, encoder_hidden_size=128, modules_to_save=HEAD), 3e-3),
}


def optimizer_for(model, adapter_lr: float) -> torch.optim.Optimizer:
    head = [p for n, p in model.named_parameters() if p.requires_grad and ".copies." in n]
    own = [p for n, p in model.named_parameters() if p.requires_grad and ".copies." not in n]
    return torch.optim.AdamW([{"params": own, "lr": adapter_lr}, {"params": head, "lr": FULL["lr"]}])


def run(method: str, seed: int, epochs: int) -> dict:
    config, adapter_lr = METHODS[method]
    torch.manual_seed(seed)
    train, test = demo_split(seed=seed)
    tokenizer, model = load_model()
    tt.apply(model, config)
    loader = text_loader(train, tokenizer, DEMO_LABELS, FULL["batch_size"], shuffle=True, seed=seed)
    test_loader = text_loader(test, tokenizer, DEMO_LABELS, 64)
    result = tt.train(model, loader, epochs=epochs, optimizer=optimizer_for(model, adapter_lr),
                      scheduler=tt.linear_schedule(), progress=False)
    accuracy = tt.evaluate(model, test_loader, tt.accuracy)["accuracy"]
    trainable, _ = tt.trainable_parameters(model)
    return {"method": method, "seed": seed, "accuracy": round(accuracy, 4), "trainable": trainable,
            "train_seconds": round(result.wall_time, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=FULL["epochs"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    for seed in args.seeds:
        for method in args.methods:
            start = time.perf_counter()
            print(json.dumps(run(method, seed, args.epochs)), f"# {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
