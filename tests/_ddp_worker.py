"""One rank of the data-parallel test (tests/test_distributed.py), started by torchrun:

    torchrun --standalone --nproc_per_node 2 tests/_ddp_worker.py OUT_DIR

Every rank writes its final trainable tensors and masks to OUT_DIR/rank<r>.safetensors; rank 0
alone writes the checkpoints to OUT_DIR/ckpt.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import trimtune as tt
from trimtune.training.distributed import (
    distributed_loader,
    distributed_model,
    init_distributed,
)

PER_RANK_BATCH, EXAMPLES, EPOCHS = 4, 32, 2


def build_model():
    """tiny BERT + a fixed pruning mask + LoRA, identical in every process; dropout off so the
    1-process and 2-process runs draw no random numbers that could differ."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100,
        max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    tt.apply(model, tt.LoraConfig(r=4, init="gaussian", modules_to_save=["classifier"]))
    query = model.get_submodule("bert.encoder.layer.0.attention.self.query")
    query.set_mask((torch.rand(query.weight.shape) > 0.5).float())
    return model


def dataset():
    generator = torch.Generator().manual_seed(1)
    return [
        {"input_ids": torch.randint(3, 100, (9,), generator=generator), "labels": torch.randint(0, 3, (), generator=generator)}
        for _ in range(EXAMPLES)
    ]


def final_state(model):
    return {n: t.detach().clone().contiguous() for n, t in model.state_dict().items() if ".deltas." in n or ".copies." in n or n.endswith("weight_mask")}


def run(out: Path, per_rank_batch: int):
    info = init_distributed()
    model = distributed_model(build_model(), info)
    loader = distributed_loader(dataset(), per_rank_batch, shuffle=True, seed=3)
    tt.train(model, loader, epochs=EPOCHS, lr=1e-2, progress=False, checkpoint=tt.CheckpointConfig(out / "ckpt", every=4))
    return info, model.module if info.world_size > 1 else model


if __name__ == "__main__":
    out = Path(sys.argv[1])
    info, trained = run(out, PER_RANK_BATCH)
    save_file(final_state(trained), out / f"rank{info.rank}.safetensors")
    from _worker_exit import leave

    leave()
