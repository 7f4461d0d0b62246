"""Statistics passes stop each forward after the last watched layer's input (prune/early_stop.py):
the statistics are those of whole forwards, the work after that layer is skipped, and a forward
that departs from the first one's order runs to its end."""

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from trimtune.prune import collect_input_norms
from trimtune.prune.early_stop import stopping_after
from trimtune.prune.sequential.block import _hessians
from trimtune.prune.sequential.capture import BlockCalls, capture
from trimtune.prune.sequential.pipeline import calibration_batches
from trimtune.core.state import wrapped


def llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def calls_of(model) -> BlockCalls:
    samples = torch.randint(0, 128, (5, 12), generator=torch.Generator().manual_seed(1))
    return capture(model, model.model.layers[0], calibration_batches(samples, model, 12))


def whole_forward_inputs(block, names, calls):
    """Every named layer's inputs over whole forwards (no early stop), as (tokens, features) rows."""
    seen = {n: [] for n in names}
    handles = [block.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].reshape(-1, a[0].shape[-1])))
               for n in names]
    with torch.no_grad():
        for call in calls:
            block(**call)
    for h in handles:
        h.remove()
    return {n: torch.cat(rows) for n, rows in seen.items()}


def test_statistics_equal_whole_forwards_and_the_work_after_the_last_layer_is_skipped():
    model = llama()
    block, calls = model.model.layers[0], calls_of(model)
    names = ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]
    inputs = whole_forward_inputs(block, names, calls)
    ran_down = []
    block.mlp.register_forward_hook(lambda *a: ran_down.append(1))  # runs once down_proj's product is done: skipped when stopped
    with wrapped(block, names) as layers:
        hessians = _hessians(block, layers, calls)
        for name in names:
            x = inputs[name].double()
            assert torch.allclose(hessians[name].matrix.double(), 2 * x.t() @ x / x.shape[0], rtol=1e-4, atol=1e-6), name
    assert len(ran_down) == 1  # only the first forward (the one that records the order) ran whole
    ran_down.clear()
    norms = collect_input_norms(block, calls, targets=lambda n, m: n in names[:2])
    for name in names[:2]:
        assert torch.allclose(norms[name], inputs[name].norm(dim=0), rtol=1e-5)
    assert len(ran_down) == 1 and len(calls) == 5  # after the recording forward the FFN is never reached


class Twice(nn.Module):
    """A layer applied a number of times that depends on the input: later forwards leave the first's path."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.after = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x, repeats):
        for _ in range(repeats):
            x = self.a(x)
        x = self.b(x)
        return self.after(x)


def test_a_forward_off_the_recorded_path_runs_to_its_end():
    model = Twice()
    fed = []
    model.a.register_forward_pre_hook(lambda m, a: fed.append("a"))
    model.b.register_forward_pre_hook(lambda m, a: fed.append("b"))
    ran_after = []
    model.after.register_forward_hook(lambda *a: ran_after.append(1))
    x = torch.randn(2, 4)
    with torch.no_grad(), stopping_after([model.a, model.b]) as run:
        for repeats in (1, 1, 2, 1):
            run(lambda: model(x, repeats))
    assert fed == ["a", "b", "a", "b", "a", "a", "b", "a", "b"]  # every input taken, the 2-repeat one too
    assert len(ran_after) == 2  # the first forward (recording) and the one that left the path
