"""One rank of the distillation data-parallel test (tests/test_distill_ddp.py), started by torchrun:

    torchrun --standalone --nproc_per_node 2 tests/_ddp_distill_worker.py OUT_DIR [plain] [augmented]

A shrunk MLP student (16 -> 8 hidden units) learns from its own teacher copy (each rank holds one)
with logit and hidden-state distillation through a learned 8 -> 16 map. Each rank writes the
student's weights and the map to OUT_DIR/rank<r>.safetensors. With ``augmented``: a bag-of-tokens
classifier distils on perturbed copies of its token batches (the copies run the unwrapped student,
so their gradients must still reach DDP's all-reduce). With both ``plain`` and ``augmented``, both
runs, one after the other in the same processes (into OUT_DIR/plain and OUT_DIR/augmented): starting
the ranks costs more than the runs.
"""

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import trimtune as tt
from trimtune.training.distributed import (
    distributed_loader,
    distributed_model,
    init_distributed,
)

from _training_helpers import BagOfTokens

PER_RANK_BATCH, EXAMPLES, EPOCHS = 4, 32, 2


def run(out: Path, batch: int) -> dict[str, torch.Tensor]:
    info = init_distributed()
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    student = copy.deepcopy(teacher)
    tt.shrink(student, 0.5, example_inputs=(torch.randn(2, 4),), measure=False)
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(EXAMPLES, 4, generator=g), torch.randint(0, 3, (EXAMPLES,), generator=g))
    loader = distributed_loader(data, batch, shuffle=True, seed=0)
    distiller = tt.Distiller(student, teacher, tt.DistillConfig(alpha=0.5, hidden_layers=["0"]), example_batch=next(iter(loader)))
    tt.train(distributed_model(student, info), loader, epochs=EPOCHS, lr=1e-2, loss_fn=F.cross_entropy, callbacks=[distiller], progress=False)
    state = {f"student.{k}": v.detach().clone().contiguous() for k, v in student.state_dict().items()}
    state.update({f"map.{k}": v.detach().clone().contiguous() for k, v in distiller.maps.state_dict().items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / f"rank{info.rank}.safetensors")
    return state


def run_augmented(out: Path, batch: int) -> dict[str, torch.Tensor]:
    info = init_distributed()
    student, teacher = BagOfTokens(0), BagOfTokens(1)
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randint(0, 40, (EXAMPLES, 6), generator=g), torch.randint(0, 3, (EXAMPLES,), generator=g))
    loader = distributed_loader(data, batch, shuffle=True, seed=0)
    distiller = tt.Distiller(student, teacher, tt.DistillConfig(alpha=0.5, augment=0.5, augment_copies=2), example_batch=next(iter(loader)))
    torch.manual_seed(10 + info.rank)  # each rank perturbs its own examples differently
    tt.train(distributed_model(student, info), loader, epochs=EPOCHS, lr=1e-2, loss_fn=F.cross_entropy, callbacks=[distiller], progress=False)
    state = {f"student.{k}": v.detach().clone().contiguous() for k, v in student.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / f"rank{info.rank}.safetensors")
    return state


if __name__ == "__main__":
    from _worker_exit import leave

    out, modes = Path(sys.argv[1]), sys.argv[2:]
    if len(modes) > 1:
        for mode in modes:
            {"plain": run, "augmented": run_augmented}[mode](out / mode, PER_RANK_BATCH)
    else:
        (run_augmented if modes == ["augmented"] else run)(out, PER_RANK_BATCH)
    leave()
