"""One package per tuning method; importing this package registers them all (``core/registry.py``).

Each package holds everything about its method: config, delta or model-level apply, training hooks,
file format. The list below is the one line a new method adds.
"""

from . import adalora, bottleneck, diff, dora, ia3, lora, p_tuning, prefix, prompt_tuning, qlora, vera  # noqa: F401
