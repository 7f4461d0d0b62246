"""The demo's steps, in order. To add a step: write a module with ``STEP = Step(...)`` and add it here."""

from . import diff_text, lora_text, prune_digits

STEPS = [
    lora_text.STEP,
    prune_digits.STEP,
    diff_text.STEP,
]
