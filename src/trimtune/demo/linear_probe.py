"""The baseline fine-tuning has to beat: logistic regression on frozen, mean-pooled sentence embeddings.

Mean pooling over real tokens is how all-MiniLM-L6-v2 was trained to embed sentences, and the
regularisation strength is chosen by cross-validation on the training set only, so the probe is a
fair, tuned baseline rather than a straw man.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..models import mean_pool


@torch.no_grad()
def mean_pooled_embeddings(encoder: torch.nn.Module, loader) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) for every batch of ``loader``; ``encoder`` returns ``last_hidden_state``."""
    encoder.eval()
    features, labels = [], []
    for batch in loader:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        features.append(mean_pool(encoder(**inputs).last_hidden_state, batch["attention_mask"]))
        labels.append(batch["labels"])
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def linear_probe_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], tune: bool = True) -> float:
    """Test accuracy of a logistic regression fitted on ``train``; C chosen by 5-fold CV if ``tune``."""
    classifier = (
        LogisticRegressionCV(Cs=np.logspace(-3, 2, 11), cv=5, max_iter=3000)
        if tune
        else LogisticRegression(max_iter=2000)
    )
    probe = make_pipeline(StandardScaler(), classifier)
    with warnings.catch_warnings():  # sklearn's notices about its own future API are not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        probe.fit(*train)
    return float(probe.score(*test))
