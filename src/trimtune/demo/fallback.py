"""Minimal training, accuracy and adapter saving for the demo until `trimtune.train`, `evaluate` and
`save_adapter` land on main; then this file goes."""

from __future__ import annotations

import torch


def train_epochs(model, loader, epochs: int, lr: float, log=print) -> list[float]:
    """AdamW over the trainable parameters with linear decay; returns the mean loss of each epoch."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    total = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
    model.train()
    losses = []
    for epoch in range(epochs):
        running = 0.0
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            running += loss.item()
        losses.append(running / len(loader))
        log(f"  epoch {epoch + 1}/{epochs}: mean loss {losses[-1]:.4f}")
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    for batch in loader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        correct += (logits.argmax(-1) == batch["labels"]).sum().item()
        total += len(batch["labels"])
    return correct / total


def save_trainable(model, out_dir) -> str:
    """The trainable tensors as one safetensors file, written atomically."""
    import os
    import tempfile
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp)
    os.replace(tmp, out / "adapter_model.safetensors")
    return str(out)
