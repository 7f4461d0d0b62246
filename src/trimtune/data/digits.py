"""scikit-learn's handwritten digits (8x8, 10 classes; shipped in the sklearn wheel) as tensors."""

from __future__ import annotations

import torch


def load_digits_split(test_fraction: float = 0.25, seed: int = 0):
    """(x_train, y_train, x_test, y_test): images (N, 1, 8, 8) scaled to [0, 1], a seeded stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        range(len(labels)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
