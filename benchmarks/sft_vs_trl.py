"""Instruction tuning (SFT) with LoRA: trimtune vs TRL's SFTTrainer + peft, side by side.

Both train the same model on the same prompt/completion pairs (the shipped demo reviews turned into
"what is this review about, and is it positive?" questions; loss on the completions), with the same
LoRA (dropout 0, identical starting factors: trimtune's are copied from peft's, B made nonzero in both
so the first loss already tests the adapted forward), the same batches in the same order (TRL's
sequential sampler; its best-fit-decreasing windows when packing), AdamW (weight decay 0), linear
decay, gradient clipping at 1, fp32, no gradient checkpointing. Reported per setting (packing off
and on): the largest difference between the per-step losses, the median step time of each (first
step left out) and the peak memory of each, measured in its own process (``_harness``).

    PYTHONPATH=src python benchmarks/sft_vs_trl.py                # SmolLM2-135M, 20 steps, batch 4, 256 tokens
    PYTHONPATH=src python benchmarks/sft_vs_trl.py --tiny --steps 3   # a tiny random Llama, to check the script runs

Needs ``pip install trl`` (1.16 was used). Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness  # noqa: E402
import torch  # noqa: E402

import trimtune as tt  # noqa: E402
from trimtune.data.demo_texts import load_demo_texts  # noqa: E402
from trimtune.data.sft import SftOptions, sft_loader  # noqa: E402

ANSWERS = {"food_good": "the food, positive", "food_bad": "the food, negative",
           "service_good": "the service, positive", "service_bad": "the service, negative"}


@dataclass(frozen=True)
class Setting:
    packing: bool = False
    steps: int = 20
    batch: int = 4
    max_length: int = 256
    lr: float = 2e-4
    r: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    pad_token: str | None = None  # SmolLM2's pad is its EOS, which carries loss: pad with another token
    assistant_only_loss: bool = False  # chats: TRL learns every token unless asked; trimtune learns the assistant's by default


def review_records(n: int | None = None) -> list[dict]:
    """Prompt/completion pairs from the shipped reviews (in their file order)."""
    records = [{"prompt": f"Review: {r['text']}\nWhat is it about, and is it positive or negative?\nAnswer:",
                "completion": f" {ANSWERS[r['label']]}"} for r in load_demo_texts()]
    return records[:n]


# ---- TRL + peft ----
def trl_trainer(model, tokenizer, records: list[dict], s: Setting, out_dir: str):
    import datasets
    import peft
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Recorder(TrainerCallback):
        """Each step's loss (logged every step, unrounded) and end time."""

        def __init__(self):
            self.losses, self.times = [], [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    config = SFTConfig(output_dir=out_dir, max_steps=s.steps, per_device_train_batch_size=s.batch, learning_rate=s.lr,
                       max_length=s.max_length, packing=s.packing, pad_token=s.pad_token, logging_steps=1, report_to="none",
                       save_strategy="no", bf16=False, use_cpu=True, gradient_checkpointing=False, disable_tqdm=True,
                       train_sampling_strategy="sequential", weight_decay=0.0, max_grad_norm=1.0, seed=0,
                       assistant_only_loss=s.assistant_only_loss)
    lora = peft.LoraConfig(r=s.r, lora_alpha=s.alpha, target_modules=list(s.targets), lora_dropout=0.0)
    recorder = Recorder()
    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(records), processing_class=tokenizer,
                         peft_config=lora, callbacks=[recorder])
    trainer.recorder = recorder
    return trainer


# ---- trimtune ----
class _StepTimer:
    def __init__(self):
        self.times = [time.perf_counter()]

    def on_step_end(self, ctx, step, loss):
        self.times.append(time.perf_counter())


def trimtune_lora(model, s: Setting):
    tt.apply(model, tt.LoraConfig(r=s.r, alpha=s.alpha, targets=list(s.targets), dropout=0.0))
    return model


@torch.no_grad()
def copy_factors(peft_model, ours, seed: int = 0) -> int:
    """peft's A into ours, and one seeded nonzero B into both (peft starts B at zero, as trimtune does)."""
    generator = torch.Generator().manual_seed(seed)
    twins = dict(peft_model.named_modules())
    copied = 0
    for name, layer in ours.named_modules():
        if isinstance(layer, tt.TunedLayer):
            twin = twins[f"base_model.model.{name}"]
            b = twin.lora_B["default"].weight
            b.copy_(0.01 * torch.randn(b.shape, generator=generator))
            layer.deltas["default"].lora_A.copy_(twin.lora_A["default"].weight)
            layer.deltas["default"].lora_B.copy_(b)
            copied += 1
    if not copied:
        raise RuntimeError("no LoRA layer to copy: the targets matched nothing")
    return copied


def trimtune_training(model, tokenizer, records: list[dict], s: Setting):
    """(loader, the zero-argument run returning (losses, step end times)) for a model with LoRA applied."""
    chats = any("messages" in r for r in records)
    options = SftOptions(max_length=s.max_length, packing=s.packing, pad_token=s.pad_token,
                         completion_only_loss=s.assistant_only_loss or not chats)
    loader, report = sft_loader(records, tokenizer, options, batch_size=s.batch, shuffle=False, model=model)

    def run():
        timer = _StepTimer()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=0.0)
        result = tt.train(model, loader, max_steps=s.steps, optimizer=optimizer, scheduler=tt.linear_schedule(0), clip=1.0,
                          progress=False, callbacks=[timer])
        return result.losses, timer.times
    run.report = report
    return loader, run


def compare(make_model, tokenizer, records: list[dict], s: Setting) -> dict:
    """Both trainings in this process from the same starting adapter: losses and step times."""
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = trl_trainer(make_model(), tokenizer, records, s, out_dir)
        ours = trimtune_lora(make_model(), s)
        copy_factors(trainer.model, ours)
        loader, run = trimtune_training(ours, tokenizer, records, s)
        trainer.train()
    our_losses, our_times = run()
    trl_losses, trl_times = trainer.recorder.losses, trainer.recorder.times
    diffs = [abs(a - b) for a, b in zip(our_losses, trl_losses)]
    return {"trl_losses": trl_losses, "losses": our_losses, "max_diff": max(diffs), "trainer": trainer, "loader": loader, "report": run.report,
            "step_ms": _median_step_ms(our_times), "trl_step_ms": _median_step_ms(trl_times)}


def _median_step_ms(times: list[float]) -> float:
    steps = [b - a for a, b in zip(times, times[1:])]
    return 1000 * statistics.median(steps[1:] or steps)


# ---- peak memory, each side in its own process ----
def _build_trl(model_source, s: Setting):
    model, tokenizer = load(model_source)
    out_dir = tempfile.mkdtemp()
    trainer = trl_trainer(model, tokenizer, review_records(records_needed(s)), s, out_dir)

    def run():
        try:
            return trainer.train()
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
    return run


def _build_trimtune(model_source, s: Setting):
    model, tokenizer = load(model_source)
    _, run = trimtune_training(trimtune_lora(model, s), tokenizer, review_records(records_needed(s)), s)
    return run


def records_needed(s: Setting) -> int | None:
    return None if s.packing else s.steps * s.batch


def load(source):
    """(model, tokenizer): ``source`` is a model directory or "tiny" (a random Llama with the SmolLM2 tokenizer's shape)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if source != "tiny":
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32), AutoTokenizer.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(smollm2())
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=len(tokenizer), max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config), tokenizer


def smollm2() -> Path:
    from _smollm2 import smollm2_dir

    return smollm2_dir()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of SmolLM2-135M (checks the script)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=_harness.THREADS)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    args = parser.parse_args(argv)
    _harness.THREADS = args.threads
    _harness.PRELOAD = [*_harness.PRELOAD, "trl", "datasets"]  # the memory children import them before measuring
    _harness.set_threads()
    source = "tiny" if args.tiny else str(smollm2())
    rows = []
    for packing in (False, True):
        s = Setting(packing=packing, steps=args.steps, batch=args.batch, max_length=args.max_length, pad_token="<|endoftext|>")
        model, tokenizer = load(source)
        result = compare(lambda: copy.deepcopy(model), tokenizer, review_records(records_needed(s)), s)
        memory = ("-", "-", "-") if args.no_memory else _memory(source, s)
        rows.append(["on" if packing else "off", f"{result['max_diff']:.2e}", result["step_ms"], result["trl_step_ms"],
                     result["step_ms"] / result["trl_step_ms"], *memory])
        print(f"packing {rows[-1][0]}: trimtune losses {[round(x, 5) for x in result['losses']]}", flush=True)
        print(f"packing {rows[-1][0]}: TRL losses      {[round(x, 5) for x in result['trl_losses']]}", flush=True)
    name = "tiny random Llama" if args.tiny else "SmolLM2-135M"
    print(f"\n{name}, LoRA r=8 on q,k,v,o, {args.steps} steps, batch {args.batch}, max_length {args.max_length}, fp32, "
          f"{args.threads} threads, peak memory by {_harness.memory_method()}:\n")
    print(_harness.markdown_table(["packing", "max |Δloss|", "trimtune ms/step", "TRL ms/step", "time ratio",
                                   "trimtune peak MiB", "TRL peak MiB", "memory ratio"], rows))
    return 0


def _memory(source, s: Setting) -> tuple:
    ours = _harness.peak_memory_mb(_build_trimtune, source, s, calls=1)
    theirs = _harness.peak_memory_mb(_build_trl, source, replace(s), calls=1)
    return ours, theirs, ours / theirs


if __name__ == "__main__":
    sys.exit(main())
