"""Ranks of the FSDP2 tests (tests/test_fsdp.py), started by torchrun, or called in-process for the
1-process reference:

    torchrun --standalone --nproc_per_node 2 tests/_fsdp_worker.py train METHOD ARCH OUT_DIR
    torchrun --standalone --nproc_per_node 2 tests/_fsdp_worker.py fill ARCH OUT_DIR
    torchrun --standalone --nproc_per_node N tests/_fsdp_worker.py ckpt CKPT_DIR OUT_DIR [resume] [kill=STEP]
    torchrun --standalone --nproc_per_node 2 tests/_fsdp_worker.py batch "COMMAND ARGS" "COMMAND ARGS" ...

``train`` shards the adapted model (2 processes), trains with ``trimtune.train`` on the same global
batches as 1 process, saves the adapter (``save_adapter`` / ``save_diff``) to OUT_DIR/adapter and the
losses to OUT_DIR/losses.json. ``fill`` writes a rank-specific value into each rank's local shard of
every trainable tensor and saves: the file must hold every rank's values; then it checks two
refusals (masks differing between ranks, a pruning schedule on a sharded model). ``ckpt`` trains LoRA with
sharded checkpoints, optionally resuming, or killing the last rank with SIGKILL after step STEP.
``batch`` runs several of these commands one after the other in the same processes: starting the ranks
(importing torch, transformers and trimtune, joining the process group) costs far more than a tiny
run, so the tests start them once. A command that raises is reported on stderr and the next one runs.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from _worker_exit import leave

import trimtune as tt
from trimtune.training.distributed import distributed_loader, init_distributed

PER_RANK_BATCH, EXAMPLES, STEPS, SEQ = 2, 8, 4, 8
CKPT_STEPS = 6


def build_base(arch: str):
    """A tiny random model, dropout off, identical in every process (``<arch>+units``: the same, sharded
    with a unit per wrapped layer). ``<arch>+gc``: with activation
    (gradient) checkpointing, non-reentrant."""
    import transformers as tr

    if arch.endswith("+units"):  # the same model; shard_model(layer_units=True) makes each wrapped layer a unit
        return build_base(arch.removesuffix("+units"))
    if arch.endswith("+meta"):  # the same model; 2 processes build it on the meta device (built_on_meta)
        return build_base(arch.removesuffix("+meta"))
    if arch.endswith("+gc"):
        model = build_base(arch.removesuffix("+gc"))
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model
    torch.manual_seed(0)
    if arch == "llama":  # grouped-query attention: 4 query heads, 2 key/value heads
        config = tr.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=100, max_position_embeddings=64, pad_token_id=0)
        return tr.LlamaForCausalLM(config)
    if arch == "gpt2":  # tied input/output embeddings
        config = tr.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64, resid_pdrop=0.0,
                               embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0)
        return tr.GPT2LMHeadModel(config)
    if arch == "bert":
        config = tr.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100,
                               max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return tr.BertForSequenceClassification(config)
    raise ValueError(arch)


def method_config(method: str, arch: str):
    head = ["classifier"] if arch.startswith("bert") else []
    if method == "lora":
        return tt.LoraConfig(r=4, init="gaussian", modules_to_save=head)
    if method == "qlora":  # the 4-bit base is sharded too (stored as plain tensors: core/plain_four_bit.py)
        return tt.QLoraConfig(r=4, init="gaussian", modules_to_save=head)
    if method == "qlora-512":  # one scale per 512 weights: k/v_proj have 1 block, so rank 1's slice of its scales is empty
        return tt.QLoraConfig(r=4, init="gaussian", blocksize=512, modules_to_save=head)
    if method == "dora":
        return tt.DoraConfig(r=4, init="gaussian", modules_to_save=head)
    if method == "vera":  # the shared random pair is a buffer: whole on every rank, like a mask
        return tt.VeraConfig(r=8, modules_to_save=head)
    if method == "adalora":
        return tt.AdaLoraConfig(init_r=4, target_r=2, tinit=1, tfinal=1, deltaT=1, modules_to_save=head)
    if method == "ia3":
        return tt.IA3Config(modules_to_save=head)
    if method == "prefix":
        return tt.PrefixTuningConfig(num_virtual_tokens=3, modules_to_save=head)
    if method == "diff":
        return tt.DiffConfig(density=0.05, penalty="l1", modules_to_save=head)
    if method == "bottleneck":
        return tt.BottleneckConfig(modules_to_save=head)
    if method == "prompt":
        return tt.PromptTuningConfig(num_virtual_tokens=3, modules_to_save=head)
    if method == "p-tuning":
        return tt.PTuningConfig(num_virtual_tokens=3, modules_to_save=head)
    raise ValueError(method)


def build_model(method: str, arch: str, mask_seed: int | None = None):
    model = build_base(arch)
    tt.apply(model, method_config(method, arch))
    if mask_seed is not None:  # a pruning mask (a buffer, which FSDP2 does not shard) on the first wrapped layer
        from trimtune.core.state import layers

        _, layer = next(layers(model))
        generator = torch.Generator().manual_seed(mask_seed)
        layer.set_mask((torch.rand(layer.weight.shape, generator=generator) > 0.5).float())
    with torch.no_grad():  # move every trainable tensor off its neutral start so saving is tested on real values
        generator = torch.Generator().manual_seed(2)
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad and "lora_B" in _:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def built_on_meta(method: str, arch: str):
    """``build_model(method, arch)`` built on the meta device and sharded before it has any memory,
    then given the values of the whole model slice by slice (as loading a checkpoint would; the
    whole reference is the test's shortcut to the same values as 1 process)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
    )

    from trimtune.training.fsdp import shard_model

    reference = build_model(method, arch)
    with torch.device("meta"):
        model = build_base(arch)
    tt.apply(model, method_config(method, arch))
    shard_model(model)
    model.to_empty(device="cpu")
    set_model_state_dict(model, reference.state_dict(), options=StateDictOptions(full_state_dict=True))
    for name, buffer in reference.named_buffers():  # non-persistent buffers (rotary frequencies) are in no state dict
        model.get_buffer(name).copy_(buffer)
    return model


def dataset(arch: str):
    generator = torch.Generator().manual_seed(1)
    examples = []
    for _ in range(EXAMPLES):
        ids = torch.randint(3, 100, (SEQ,), generator=generator)
        label = torch.randint(0, 3, (), generator=generator) if arch.startswith("bert") else ids
        examples.append({"input_ids": ids, "labels": label})
    return examples


def train_run(method: str, arch: str, out: Path, per_rank_batch: int, resume: bool = False, max_steps: int = STEPS):
    """Train and save; returns (model, losses). With one process the model is not sharded."""
    from trimtune.training.fsdp import shard_model

    info = init_distributed()
    if arch.endswith("+meta") and info.world_size > 1:
        model = built_on_meta(method, arch)
    else:
        model = build_model(method, arch, mask_seed=4 if (method, arch) == ("lora", "bert") else None)
    if info.world_size > 1 and not arch.endswith("+meta"):
        shard_model(model, layer_units=arch.endswith("+units"))
        if method == "qlora":
            (out / f"four_bit_rank{info.rank}.json").parent.mkdir(parents=True, exist_ok=True)
            (out / f"four_bit_rank{info.rank}.json").write_text(json.dumps(four_bit_storage(model)))
    loader = distributed_loader(dataset(arch), per_rank_batch, shuffle=True, seed=3)
    losses = tt.train(model, loader, max_steps=max_steps, lr=1e-2, progress=False).losses
    if method == "diff":  # project to the exact density, fine-tune the kept entries, save
        tt.project_diffs(model)
        losses += tt.train(model, loader, max_steps=2, lr=1e-2, progress=False).losses
        tt.save_diff(model, out / "adapter")
    elif method == "bottleneck":  # no peft file format: compare the gathered trainable tensors
        from safetensors.torch import save_file

        from trimtune.core.io.gather import gathered, writes_files

        tensors = gathered({n: p for n, p in model.named_parameters() if p.requires_grad})
        if writes_files():
            (out / "adapter").mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in tensors.items()}, out / "adapter" / "adapter_model.safetensors")
    else:
        tt.save_adapter(model, out / "adapter")
    return model, losses


def four_bit_storage(model) -> dict:
    """{tensor name: [bytes this rank holds (its storage, padding included), bytes of the whole
    tensor]} for every tensor of a 4-bit base; under "replicated" the bytes that grow with the base
    yet stay whole on every rank (the nested scales of double quantisation, 1/256 of the scales; the
    fixed 256-entry code tables are left out); under "whole_left" the number of bitsandbytes
    Params4bit objects still alive (each would hold a whole packed weight)."""
    import gc

    from bitsandbytes.nn import Params4bit

    from trimtune.core.plain_four_bit import ABSMAX, is_plain_4bit
    from trimtune.core.state import layers

    record, replicated = {}, 0
    for name, layer in layers(model):
        if not is_plain_4bit(layer):
            continue
        for key in ("weight", ABSMAX):
            param = getattr(layer, key)
            record[f"{name}.{key}"] = [param.to_local().untyped_storage().nbytes(), param.numel() * param.element_size()]
        nested = layer.quant_template.state2
        replicated += 0 if nested is None else nested.absmax.numel() * nested.absmax.element_size()
    gc.collect()
    whole_left = sum(isinstance(o, Params4bit) for o in gc.get_objects())
    return {"tensors": record, "replicated": replicated, "whole_left": whole_left}


@torch.no_grad()
def fill_shards(model) -> None:
    """Local shard of every trainable tensor := 1000·(rank+1) + local position: a file holding only
    rank 0's slice, or rank 0's slice repeated, cannot match the expected pattern."""
    rank = torch.distributed.get_rank()
    for param in model.parameters():
        if param.requires_grad:
            local = param.to_local()
            local.copy_(1000.0 * (rank + 1) + torch.arange(local.numel(), dtype=local.dtype).view(local.shape))


def expected_fill(shape, world: int) -> torch.Tensor:
    """What ``fill_shards`` leaves in a tensor of ``shape`` once gathered (FSDP2 shards dim 0 in
    ceil(n / world) rows per rank)."""
    rows = -(-shape[0] // world)
    parts = []
    for rank in range(world):
        n = max(0, min(rows, shape[0] - rank * rows))
        local_shape = (n, *shape[1:])
        numel = int(torch.Size(local_shape).numel())
        parts.append(1000.0 * (rank + 1) + torch.arange(numel, dtype=torch.float32).view(local_shape))
    return torch.cat(parts)


class KillAt:
    """kill -9 of the last rank right after optimizer step ``step`` (a crash, not an exception)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, ctx, step, loss):
        info = init_distributed()
        if step == self.step and info.rank == info.world_size - 1:
            os.kill(os.getpid(), signal.SIGKILL)


def checkpointed_run(ckpt: Path, out: Path, flags: list[str]):
    """LoRA on Llama for CKPT_STEPS steps, checkpointing every 2 (sharded), maybe resumed / killed."""
    from trimtune.training.fsdp import shard_model

    info = init_distributed()
    model = build_model("lora", "llama")
    if info.world_size > 1:
        shard_model(model)
    loader = distributed_loader(dataset("llama"), 2 * PER_RANK_BATCH // info.world_size, shuffle=True, seed=3)
    kill = [KillAt(int(f.split("=")[1])) for f in flags if f.startswith("kill=")]
    result = tt.train(model, loader, max_steps=CKPT_STEPS, lr=1e-2, progress=False, callbacks=kill,
                      checkpoint=tt.CheckpointConfig(ckpt, every=2, sharded=True), resume="resume" in flags)
    tt.save_adapter(model, out / "adapter")
    if info.rank == 0:
        (out / "losses.json").write_text(json.dumps(result.losses))


def run_command(argv: list[str]) -> None:
    from trimtune.training.fsdp import shard_model

    if argv[0] == "train":
        method, arch, out = argv[1], argv[2], Path(argv[3])
        info = init_distributed()
        _, losses = train_run(method, arch, out, PER_RANK_BATCH)
        if info.rank == 0:
            (out / "losses.json").write_text(json.dumps(losses))
    elif argv[0] == "ckpt":
        checkpointed_run(Path(argv[1]), Path(argv[2]), argv[3:])
    elif argv[0] == "fill":
        arch, out = argv[1], Path(argv[2])
        init_distributed()
        model = shard_model(build_model("lora", arch))
        fill_shards(model)
        tt.save_adapter(model, out / "adapter")
        rank = torch.distributed.get_rank()
        try:  # masks drawn differently on each rank must be refused, not silently mixed
            shard_model(build_model("lora", arch, mask_seed=10 + rank))
        except ValueError as error:
            if rank == 0:
                (out / "refused.txt").write_text(str(error))
        from trimtune.prune import PruneConfig, PruneSchedule, PruningCallback

        try:  # masks that change during training (a pruning schedule) are refused at the start, before any step
            pruning = PruningCallback(PruneConfig(amount=0.5), PruneSchedule(0.5, "cubic", begin=0, end=2))
            tt.train(model, distributed_loader(dataset(arch), PER_RANK_BATCH), max_steps=2, lr=1e-2, progress=False, callbacks=[pruning])
        except tt.ConfigError as error:
            if rank == 0:
                (out / "pruning_refused.txt").write_text(str(error))
    else:
        raise ValueError(f"unknown command {argv[0]!r}")


def run_batch(commands: list[str]) -> None:
    """Each command as ``run_command`` takes it, in one string (shlex quoting); a failure is printed
    with its command and the next command runs, so each test sees its own command's failure."""
    import shlex
    import traceback

    for command in commands:
        try:
            run_command(shlex.split(command))
        except Exception:
            print(f"batch command failed: {command}\n{traceback.format_exc()}", file=sys.stderr)


def main(argv: list[str]) -> None:
    if argv[0] == "batch":
        run_batch(argv[1:])
    else:
        run_command(argv)
    leave()


if __name__ == "__main__":
    main(sys.argv[1:])
