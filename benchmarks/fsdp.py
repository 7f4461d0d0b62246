"""Per-process memory of LoRA training on 1 process, DDP x 2 and FSDP2 x 2, in one run.

A random Llama (default hidden 1024, 16 layers, 16 heads / 4 kv heads, FFN 2816, vocab 8192) with
LoRA r=16 on every attention and MLP projection; each variant trains a few steps (forward + backward
+ AdamW) on the same global batch, started by torchrun (gloo, 1 thread per process). Every process
reports its own figures:

- runtime MiB: resident set before any model exists (python, torch, transformers, gloo): the same
  in every variant, and part of every peak;
- build peak MiB: the high-water mark of the resident set (``VmHWM``) up to there: building,
  adapting, wrapping or sharding;
- model MiB: resident set after the model is built, adapted and wrapped/sharded (RSS);
- train peak MiB: the kernel's high-water mark of the resident set (``VmHWM``, reset once the model
  is ready, see ``_harness``) over the training steps: what the process needs to train;
- step ms: median wall time of the timed steps.

The FSDP2 variants build the model on the meta device, shard it, then give each rank memory for
its slices only (``materialize``: random values), as a model that does not fit one process must be
built; the others build it whole on the CPU. (With ``--qlora`` every variant builds it whole:
quantising needs the real weights.) glibc is told to give large freed
blocks back to the kernel (``MALLOC_MMAP_THRESHOLD_``), so the RSS shows what FSDP freed.

    PYTHONPATH=src python benchmarks/fsdp.py                # full run, writes docs/benchmarks.md
    PYTHONPATH=src python benchmarks/fsdp.py --quick        # tiny model, seconds, prints only
    PYTHONPATH=src python benchmarks/fsdp.py --qlora        # the same with QLoRA's 4-bit base, prints only
    PYTHONPATH=src python benchmarks/fsdp.py --trace        # plus RSS at every block of a step, prints only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- fsdp:begin -->", "<!-- fsdp:end -->"
COMMAND = "PYTHONPATH=src python benchmarks/fsdp.py"
FULL = dict(hidden=1024, layers=16, heads=16, kv_heads=4, ffn=2816, vocab=8192, seq=64, steps=3)
QUICK = dict(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=256, seq=16, steps=2)
# (row, processes, strategy); "fsdp+layers": FSDP2 with a unit per wrapped layer too (shard_model(layer_units=True))
VARIANTS = [("1 process", 1, "ddp"), ("DDP x 2", 2, "ddp"), ("FSDP2 x 2", 2, "fsdp"), ("FSDP2 x 2, a unit per layer", 2, "fsdp+layers")]
GLOBAL_BATCH = 2


# ---- one process of one variant (run under torchrun) ----
def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def worker(size: dict, strategy: str, out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import trimtune as tt
    from trimtune.training.distributed import init_distributed, parallel_model

    torch.set_num_threads(1)
    info = init_distributed()
    if size.get("method") == "qlora":
        import bitsandbytes  # noqa: F401  (~46 MiB of code and libraries: part of the runtime, not of the model)
    runtime = _status_mib("VmRSS")  # python, torch, transformers, gloo: before any model exists
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=size["hidden"], num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                         num_key_value_heads=size["kv_heads"], intermediate_size=size["ffn"], vocab_size=size["vocab"],
                         max_position_embeddings=size["seq"], pad_token_id=0)
    # FSDP2 builds on the meta device (no memory), shards, then gives each rank only its slices;
    # QLoRA's quantisation needs real weights, so a QLoRA model is built whole first
    meta = strategy.startswith("fsdp") and info.world_size > 1 and size.get("method") != "qlora"
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = LlamaForCausalLM(config)
    method = tt.QLoraConfig if size.get("method") == "qlora" else tt.LoraConfig  # QLoRA: every projection stored in 4 bits (NF4)
    tt.apply(model, method(r=16, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model = parallel_model(model, info, strategy.removesuffix("+layers"), layer_units=strategy.endswith("+layers"))
    if meta:
        materialize(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    per_rank = GLOBAL_BATCH // info.world_size
    ids = torch.randint(3, size["vocab"], (GLOBAL_BATCH, size["seq"]), generator=torch.Generator().manual_seed(1))
    ids = ids[info.rank * per_rank:(info.rank + 1) * per_rank]
    model.train()
    import gc

    gc.collect()
    resident = _status_mib("VmRSS")
    build_peak = _status_mib("VmHWM")  # building, adapting, wrapping or sharding (and materialising)
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM: the peak from here on is training's
        f.write("5")
    trace = _trace_units(getattr(model, "module", model)) if size.get("trace") else []  # DDP: the model inside
    times = []
    for _ in range(size["steps"]):
        trace.clear()  # the last step's trace is kept
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(1e3 * (time.perf_counter() - start))
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"{strategy}: the loss is {loss.item()} (a slice left uninitialised?)")
    record = {"rank": info.rank, "runtime_mib": runtime, "build_peak_mib": build_peak, "model_mib": resident,
              "peak_mib": _status_mib("VmHWM"), "step_ms": statistics.median(times[1:] or times),  # the first step allocates optimizer state
              "trace": trace}
    (out / f"rank{info.rank}.json").write_text(json.dumps(record))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank done before the group goes (gloo aborts on a peer's early teardown)
        torch.distributed.destroy_process_group()
    sys.stdout.flush()  # the record is written; skip the interpreter teardown, where gloo's threads sometimes abort
    os._exit(0)


def _trace_units(model) -> list:
    """Record (module, event, VmRSS MiB, VmHWM MiB) at the start and end of the forward of the input
    embedding, every decoder block and the head, and at the start of their backward: where the
    memory goes during a step (``--trace``)."""
    trace = []
    modules = [("embed", model.get_input_embeddings()), *((f"block {i}", b) for i, b in enumerate(model.model.layers)),
               ("head", model.get_output_embeddings())]
    for name, module in modules:
        def record(event, name=name):
            return lambda *args: trace.append((name, event, round(_status_mib("VmRSS")), round(_status_mib("VmHWM"))))
        module.register_forward_pre_hook(record("forward start"))
        module.register_forward_hook(record("forward end"))
        module.register_full_backward_pre_hook(record("backward start"))
    return trace


def materialize(model, config) -> None:
    """Memory for a model sharded on the meta device, each rank only its slices, with random values
    (the figures are memory and time, not quality): LoRA's B zero, norms one, rotary frequencies
    recomputed (a non-persistent buffer ``to_empty`` leaves uninitialised)."""
    import torch

    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, param in model.named_parameters():
            local = param.to_local()
            if "lora_B" in name:
                local.zero_()
            elif local.dim() >= 2:
                local.normal_(0.0, 0.02)
            else:
                local.fill_(1.0)
        rotary = type(model.model.rotary_emb)(config)
        for name, buffer in rotary.named_buffers():
            getattr(model.model.rotary_emb, name).copy_(buffer)


# ---- the driver ----
def run_variant(size: dict, nproc: int, strategy: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   str(Path(__file__).resolve()), "--worker", json.dumps(size), strategy, tmp]
        finished = subprocess.run(command, env=env, capture_output=True, text=True)
        if finished.returncode:
            raise RuntimeError(f"{strategy} x {nproc} failed:\n{finished.stderr[-3000:]}")
        return [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(nproc)]


def measure(size: dict) -> list[list]:
    rows, single_peak, single_runtime, ddp_ms = [], None, None, None
    for name, nproc, strategy in VARIANTS:
        ranks = run_variant(size, nproc, strategy)
        peak = max(r["peak_mib"] for r in ranks)
        step = statistics.median(r["step_ms"] for r in ranks)
        single_peak = single_peak or peak
        ddp_ms = step if name.startswith("DDP") else ddp_ms
        runtime = max(r["runtime_mib"] for r in ranks)
        single_runtime = single_runtime or runtime
        if size.get("trace"):
            print(f"\n{name}, rank 0, last step (module, event, VmRSS MiB, VmHWM MiB):")
            print("\n".join(" ".join(map(str, line)) for line in ranks[0]["trace"]))
        rows.append([name, round(runtime), round(max(r["build_peak_mib"] for r in ranks)), round(max(r["model_mib"] for r in ranks)), round(peak), round(peak / single_peak, 2),
                     round((peak - runtime) / (single_peak - single_runtime), 2), round(step), round(step / ddp_ms, 2) if ddp_ms else "-"])
    return rows


def table(rows: list[list]) -> str:
    headers = ["variant", "runtime MiB", "build peak MiB / process", "model MiB / process", "train peak MiB / process", "peak vs 1 process",
               "peak above runtime vs 1 process", "step ms", "step vs DDP x 2"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def section(size: dict, rows: list[list]) -> str:
    import torch

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    params = size["layers"] * (2 * size["hidden"] ** 2 + 2 * size["hidden"] * size["hidden"] * size["kv_heads"] // size["heads"]
                               + 3 * size["hidden"] * size["ffn"]) + 2 * size["vocab"] * size["hidden"]
    return (
        f"{BEGIN}\n## FSDP2: per-process memory of LoRA training\n\nCommand: `{COMMAND}`\n\n"
        f"Random Llama, hidden {size['hidden']}, {size['layers']} layers, {size['heads']} heads / {size['kv_heads']} kv heads, "
        f"FFN {size['ffn']}, vocab {size['vocab']} (~{params / 1e6:.0f} M parameters, fp32); LoRA r=16 on all 7 projections; "
        f"global batch {GLOBAL_BATCH} x {size['seq']} tokens; {size['steps']} steps (forward + backward + AdamW), step time the "
        f"median after the first.\n\n{table(rows)}\n\n"
        f"Conditions: {when}, {platform.machine()}, {os.cpu_count()} cores (shared; load average {os.getloadavg()[0]:.1f} at the end), "
        f"torch {torch.__version__}, gloo, 1 thread per process, processes started by torchrun; train peak = VmHWM reset after "
        "the model was built, adapted and wrapped (DDP) or sharded (FSDP2), so it is what training needs resident; "
        "build peak = VmHWM up to that reset (the FSDP2 variants build on the meta device and materialise only their slices "
        "after sharding, random values); "
        f"MALLOC_MMAP_THRESHOLD_=65536 so freed weights leave the RSS.\n{END}"
    )


def write_doc(text: str) -> None:
    old = DOC.read_text()
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(new)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker(json.loads(argv[1]), argv[2], Path(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model; prints, writes nothing")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--hidden", type=int, help="override the hidden size (FFN scales with it)")
    parser.add_argument("--layers", type=int, help="override the number of layers")
    parser.add_argument("--qlora", action="store_true", help="QLoRA (4-bit NF4 base) instead of LoRA; prints, writes nothing")
    parser.add_argument("--trace", action="store_true", help="also print RSS / VmHWM at every block of rank 0's last step; writes nothing")
    args = parser.parse_args(argv)
    size = dict(QUICK if args.quick else FULL)
    if args.hidden:
        size.update(hidden=args.hidden, ffn=args.hidden * 11 // 4)
    if args.layers:
        size["layers"] = args.layers
    if args.qlora:
        size["method"] = "qlora"
    if args.trace:
        size["trace"] = True
    rows = measure(size)
    print(table(rows))
    if not (args.quick or args.no_write or args.qlora or args.trace):
        write_doc(section(size, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
