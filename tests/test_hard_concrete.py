"""One hard-concrete gate serves diff pruning and the L0 pruning gates, with each user's constants."""

import pytest
import torch

import trimtune as tt
from trimtune.core.hard_concrete import PAPER, HardConcrete
from trimtune.core.layer_kinds import LinearKind
from trimtune.prune.gates import GateDelta


@pytest.mark.parametrize("constants", [PAPER, (1.0, -1.5, 1.5)])
def test_samples_are_nonzero_as_often_as_the_formula_says(constants):
    gate = HardConcrete(*constants)
    torch.manual_seed(0)
    log_alpha = torch.tensor([-2.0, 0.0, 1.5]).repeat(200_000, 1)
    observed = (gate.sample(log_alpha) > 0).float().mean(0)
    torch.testing.assert_close(observed, gate.prob_nonzero(log_alpha[0]), atol=4e-3, rtol=0)


def test_diff_constants_close_the_test_time_gate_at_even_odds():
    diff = HardConcrete(*(lambda c: (c.beta, c.gamma, c.zeta))(tt.DiffConfig()))
    assert float(diff.prob_nonzero(torch.tensor(0.0))) == pytest.approx(0.5)
    assert float(diff.deterministic(torch.tensor(0.0))) == 0.0  # closed at test time though P(open) = 0.5
    assert float(HardConcrete().deterministic(torch.tensor(0.0))) > 0  # the paper's stretch keeps it open


def test_pruning_gates_take_their_stretch_interval_from_the_config():
    layer = torch.nn.Linear(4, 6)
    kind = LinearKind(layer)
    wide = GateDelta(kind, layer.weight, tt.GateConfig(gamma=-1.5, zeta=1.5, init=0.5)).eval()
    paper = GateDelta(kind, layer.weight, tt.GateConfig(init=0.5)).eval()
    assert torch.all(wide.gate() == 0) and torch.all(paper.gate() > 0)  # log α = 0 under each constant set
    with pytest.raises(tt.ConfigError, match="gamma must be < 0"):
        tt.GateConfig(gamma=0.1)
