"""The demo's steps, in order. To add a step: write a module with ``STEP = Step(...)`` and add it here."""

from . import diff_text, lora_text, prune_digits, shrink_models

STEPS = [
    lora_text.STEP,
    prune_digits.STEP,
    shrink_models.STEP,
    diff_text.STEP,
]
