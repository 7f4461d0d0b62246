"""Report (indices of zero structures, table, JSON), sparse storage, and the training callback."""

import json

import pytest
import torch
from torch import nn

from trimtune.prune import (
    Movement,
    PruneConfig,
    PruneSchedule,
    PruningCallback,
    prune,
    pruned_structures,
    sparsity,
    sparsity_report,
)
from trimtune.prune.files import load_sparse, save_sparse


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


def test_report_names_the_pruned_channels():
    net = _cnn()
    prune(net, PruneConfig(amount=0.5, granularity="out", targets=["0"]))
    prune(net, PruneConfig(amount=0.25, granularity="in", targets=["2"]))
    report = sparsity_report(net)
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name["0"].zero_out == pruned_structures(net[0])["out"] and len(by_name["0"].zero_out) == 4
    assert by_name["2"].zero_in == pruned_structures(net[2])["in"] and len(by_name["2"].zero_in) == 2
    assert by_name["0"].sparsity == 0.5 and by_name["2"].sparsity == 0.25
    assert report.total == 72 + 576 and report.zeros == 36 + 144
    data = json.loads(report.to_json())
    assert data["layers"][0]["zero_out"] == by_name["0"].zero_out and data["total"]["zeros"] == 180
    table = report.table()
    assert "total" in table and f"4: [{', '.join(map(str, by_name['0'].zero_out))}]" in table


def test_report_heads(tiny_bert):
    prune(tiny_bert, PruneConfig(amount=1, granularity="heads"))
    report = sparsity_report(tiny_bert)
    query = next(layer for layer in report.layers if layer.name.endswith("layer.0.attention.self.query"))
    assert len(query.heads) == 1 and len(query.zero_out) == 8


def test_sparse_save_load_roundtrip_and_size(tmp_path, tiny_bert, token_ids):
    prune(tiny_bert, PruneConfig(amount=0.9, targets=r".*(query|key|value|dense)"))
    prune(tiny_bert, PruneConfig(amount=1, granularity="heads"))
    expected = tiny_bert(token_ids).logits
    sizes = save_sparse(tiny_bert, tmp_path / "model.safetensors")
    assert sizes["sparse_bytes"] < sizes["dense_bytes"]
    torch.manual_seed(123)
    fresh = type(tiny_bert)(tiny_bert.config).eval()
    load_sparse(fresh, tmp_path / "model.safetensors")
    assert torch.allclose(fresh(token_ids).logits, expected, atol=1e-6)
    assert sparsity(fresh) == pytest.approx(sparsity(tiny_bert))
    q = "bert.encoder.layer.0.attention.self.query"
    assert pruned_structures(fresh.get_submodule(q)) == pruned_structures(tiny_bert.get_submodule(q))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_sparse_file_is_a_fraction_of_dense_at_high_sparsity(tmp_path):
    net = nn.Sequential(nn.Linear(256, 256, bias=False))
    prune(net, PruneConfig(amount=0.95, targets=["0"], protect=[]))
    sizes = save_sparse(net, tmp_path / "m.safetensors")
    assert sizes["sparse_bytes"] < 0.12 * sizes["dense_bytes"]  # 1 bit/entry + 5 % values


def test_load_sparse_rejects_wrong_file_and_shapes(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not a trimtune sparse file"):
        load_sparse(_cnn(), tmp_path / "plain.safetensors")
    net = _cnn()
    prune(net, PruneConfig(amount=0.5, targets=["0"]))
    save_sparse(net, tmp_path / "cnn.safetensors")
    other = nn.Sequential(nn.Conv2d(1, 4, 3))
    with pytest.raises(ValueError, match="in the model"):
        load_sparse(other, tmp_path / "cnn.safetensors")


def test_callback_in_trimtune_train_prunes_by_schedule_and_keeps_zeros():
    from trimtune.training import train

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))
    x = torch.randn(64, 6)
    y = (x[:, 0] > 0).long()
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    schedule = PruneSchedule(0.75, "cubic", begin=0, end=20, every=4)
    seen = []

    class Watch:
        def on_step_end(self, ctx, step, loss):
            seen.append((step, sparsity(ctx.model)))

    movement = Movement()
    callback = PruningCallback(PruneConfig(importance=movement, targets=["0"]), schedule)
    train(net, data, max_steps=30, callbacks=[callback, Watch()], progress=False,
          optimizer=torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1),
          loss_fn=nn.functional.cross_entropy)
    for step, value in seen:
        assert value == pytest.approx(schedule.sparsity_at(step), abs=0.01)
    assert torch.all(net[0].weight[net[0].weight_mask == 0] == 0)
    assert "0" in movement.scores


def test_callback_needs_both_or_neither():
    from trimtune import ConfigError

    with pytest.raises(ConfigError, match="both"):
        PruningCallback(PruneConfig())
