"""Independent checks that caught four details: movement scores at the pre-step weights, masks stored
in one byte, the cubic schedule's initial sparsity, and a global-pruning refusal that names a safe amount."""

import copy

import pytest
import torch
from safetensors.torch import save
from torch import nn

import trimtune as tt
from trimtune.prune import Magnitude, Movement, PruneConfig, PruneSchedule, PruningCallback, prune


def mlp(*widths) -> nn.Sequential:
    torch.manual_seed(0)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def test_movement_in_training_scores_the_weights_the_gradients_were_taken_at():
    net = mlp(6, 12, 3)
    reference = copy.deepcopy(net)
    torch.manual_seed(1)
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(5)]
    movement = Movement()
    never = PruneSchedule(0.5, "one-shot", begin=10_000, end=10_000)  # scores only, no pruning
    tt.train(net, data, max_steps=5, callbacks=[PruningCallback(PruneConfig(importance=movement, targets=["0"]), never)],
             optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_fn=nn.functional.cross_entropy, progress=False)
    # Sanh et al. (2020): S = −Σ_t W_t · g_t, each gradient times the weight it was computed at.
    sgd, expected = torch.optim.SGD(reference.parameters(), lr=0.1), torch.zeros_like(reference[0].weight)
    for x, y in data:
        nn.functional.cross_entropy(reference(x), y).backward()
        expected -= reference[0].weight.detach() * reference[0].weight.grad
        sgd.step()
        sgd.zero_grad()
    torch.testing.assert_close(movement.scores["0"], expected, atol=1e-6, rtol=1e-5)


def state_dict_bytes(model: nn.Module) -> int:
    return len(save({k: v.contiguous() for k, v in model.state_dict().items()}))


def test_a_pruned_state_dict_is_not_twice_the_dense_one():
    dense = mlp(256, 512, 512, 256, 10)
    pruned = copy.deepcopy(dense)
    prune(pruned, PruneConfig(amount=0.5))
    masks = [m for n, m in pruned.state_dict().items() if n.endswith("weight_mask")]
    assert masks and all(m.dtype == torch.bool for m in masks)
    assert state_dict_bytes(pruned) <= 1.3 * state_dict_bytes(dense)  # 1 byte per masked entry, not 4


def test_float_masks_from_older_files_still_load():
    net = mlp(8, 4)
    prune(net, PruneConfig(amount=0.5))
    bool_state = net.state_dict()
    float_state = {k: (v.float() if k.endswith("weight_mask") else v) for k, v in bool_state.items()}
    other = mlp(8, 4)
    prune(other, PruneConfig(amount=0.25))
    other.load_state_dict(float_state)
    assert torch.equal(other[0].weight_mask, bool_state["0.weight_mask"])
    x = torch.randn(3, 8)
    torch.testing.assert_close(other(x), net(x))


def test_cubic_schedule_starts_from_an_initial_sparsity():
    s = PruneSchedule(0.8, "cubic", begin=10, end=110, initial=0.2)
    assert s.sparsity_at(5) == 0.0 and s.sparsity_at(10) == pytest.approx(0.2) and s.sparsity_at(110) == pytest.approx(0.8)
    t = 40  # Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − (t − t0)/(n Δt))³
    assert s.sparsity_at(t) == pytest.approx(0.8 + (0.2 - 0.8) * (1 - (t - 10) / 100) ** 3)
    with pytest.raises(tt.ConfigError, match="initial"):
        PruneSchedule(0.5, "cubic", initial=0.6)


def test_global_pruning_refusal_names_the_layer_and_a_safe_amount():
    net = mlp(8, 8, 4)
    with torch.no_grad():
        net[2].weight.mul_(1e-3)  # the small last layer scores lowest everywhere
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=r"every unit of 2; at most (\d+) of the 96 pooled units \(amount=0\.\d+\)") as err:
        prune(net, PruneConfig(amount=0.5, scope="global", importance=Magnitude()))
    safe = float(str(err.value).split("amount=")[1].split(")")[0])
    assert all(not isinstance(m, tt.TunedLayer) for m in net)  # nothing left wrapped...
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # ...or changed
    prune(net, PruneConfig(amount=safe, scope="global", importance=Magnitude()))  # the named amount works
    assert int(net[2].weight_mask.sum()) >= 1
