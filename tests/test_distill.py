"""Distillation for recovery (training/distill.py): the loss is the formula, α=0 is plain training,
the teacher never learns, hidden-state maps train across a width-changing shrink, bad fields are named."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trimtune as tt
from trimtune.core.config import ConfigError
from trimtune.training.distill import DistillConfig, Distiller

from _training_helpers import BagOfTokens, Interrupt, InterruptAt


def mlp(seed=0, hidden=16, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 3))


def data(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True,
                                       generator=torch.Generator().manual_seed(2))


def test_loss_is_the_hand_computed_mix():
    student, teacher = mlp(0), mlp(1)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    alpha, T = 0.3, 2.5
    with torch.no_grad():
        s, t = student(x), teacher(x)
        p_t = torch.softmax(t / T, -1)
        kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, -1))).sum(-1).mean()
        expected = (1 - alpha) * F.cross_entropy(s, y) + alpha * T * T * kl
    distiller = Distiller(student, teacher, DistillConfig(alpha=alpha, temperature=T))
    result = tt.train(student, [(x, y)], max_steps=1, optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
                      loss_fn=F.cross_entropy, callbacks=[distiller], progress=False)
    assert result.losses[0] == pytest.approx(expected.item(), rel=1e-5)
    assert kl.item() > 1e-3  # the two models disagree, so the soft term is really in the loss


def test_alpha_zero_is_plain_training_exactly():
    def run(distill):
        model = mlp(0, dropout=0.2)
        callbacks = [Distiller(model, mlp(5), DistillConfig(alpha=0.0))] if distill else []
        torch.manual_seed(3)
        result = tt.train(model, data(), epochs=2, lr=1e-2, loss_fn=F.cross_entropy, callbacks=callbacks, progress=False)
        return result.losses, model.state_dict()

    plain_losses, plain = run(False)
    losses, distilled = run(True)
    assert losses == plain_losses
    assert all(torch.equal(plain[k], distilled[k]) for k in plain)


def test_distillation_changes_training_and_the_teacher_never_learns():
    student, teacher = mlp(0), mlp(1)
    before = copy.deepcopy(teacher.state_dict())
    distiller = Distiller(student, teacher, DistillConfig(alpha=0.7, hidden_layers=["0"]), example_batch=next(iter(data())))
    teacher.train()  # even a caller's .train() does not turn the teacher's dropout/batch-norm updates on
    tt.train(student, data(), epochs=2, lr=1e-2, loss_fn=F.cross_entropy, callbacks=[distiller], progress=False)
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    plain = mlp(0)
    tt.train(plain, data(), epochs=2, lr=1e-2, loss_fn=F.cross_entropy, progress=False)
    assert not torch.allclose(plain[0].weight, student[0].weight)


def test_hidden_state_map_trains_across_a_width_changing_shrink():
    teacher = mlp(0, hidden=16)
    student = copy.deepcopy(teacher)
    tt.shrink(student, 0.5, example_inputs=(torch.randn(2, 4),), measure=False)
    assert student[0].out_features == 8
    distiller = Distiller(student, teacher, DistillConfig(alpha=0.5, hidden_layers=["0"], hidden_weight=1.0),
                          example_batch=next(iter(data())))
    map_ = distiller.maps["0"]
    assert (map_.in_features, map_.out_features) == (8, 16)
    assert [id(p) for p in distiller.trainable_parameters()] == [id(map_.weight)]
    start = map_.weight.detach().clone()
    keys = set(student.state_dict())
    x = torch.randn(64, 4)

    def mse():
        with torch.no_grad():
            return F.mse_loss(map_(student[0](x)), teacher[0](x)).item()

    first = mse()
    tt.train(student, data(n=64), epochs=20, lr=1e-2, loss_fn=F.cross_entropy, callbacks=[distiller], progress=False)
    assert not torch.equal(start, map_.weight)
    assert mse() < 0.5 * first
    assert set(student.state_dict()) == keys  # the maps are the callback's: saved files stay clean
    with pytest.raises(ValueError, match="does not train the distillation maps"):
        own = torch.optim.SGD(student.parameters(), lr=0.1)
        tt.train(student, data(), max_steps=1, optimizer=own, loss_fn=F.cross_entropy, callbacks=[distiller], progress=False)


@pytest.mark.parametrize("augment", [0.0, 0.3])
def test_distillation_on_hf_style_batches_with_an_adapter(augment):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(config)
    student = copy.deepcopy(teacher)
    tt.apply(student, tt.LoraConfig(r=2, targets=["query", "value"], modules_to_save=["classifier"]))
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 50, (4, 6), generator=g), "attention_mask": torch.ones(4, 6, dtype=torch.long),
                "labels": torch.randint(0, 3, (4,), generator=g)} for _ in range(3)]
    config = DistillConfig(alpha=0.5, hidden_layers=["bert.encoder.layer.1"], augment=augment)
    distiller = Distiller(student, teacher, config, example_batch=batches[0])
    assert len(distiller.maps) == 0  # same width: states are compared directly
    result = tt.train(student, batches, epochs=1, lr=1e-3, callbacks=[distiller], progress=False)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert all(p.grad is None for p in teacher.parameters())
    assert distiller.teacher_calls == 1 + 3 * (2 if augment else 1)  # the maps' probe, then each batch (and its copy)


def test_cached_teacher_logits_give_the_same_training_with_one_teacher_pass_per_example():
    def run(cache):
        student, teacher = mlp(0), mlp(1)
        distiller = Distiller(student, teacher, DistillConfig(alpha=0.6, cache_teacher=cache))
        result = tt.train(student, data(), epochs=3, lr=1e-2, loss_fn=F.cross_entropy, callbacks=[distiller], progress=False)
        return result.losses, student.state_dict(), distiller.teacher_calls

    losses, weights, calls = run(True)
    plain_losses, plain_weights, plain_calls = run(False)
    assert (calls, plain_calls) == (3, 9)  # 3 batches an epoch: the teacher runs in the first epoch only
    assert losses == plain_losses and all(torch.equal(weights[k], plain_weights[k]) for k in weights)


def test_row_keys_ignore_padding():
    from trimtune.training.distill import row_keys

    short = {"input_ids": torch.tensor([[5, 6, 0]]), "attention_mask": torch.tensor([[1, 1, 0]])}
    long = {"input_ids": torch.tensor([[5, 6, 0, 0, 0], [5, 7, 0, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]])}
    assert row_keys(short)[0] == row_keys(long)[0] != row_keys(long)[1]


@pytest.mark.parametrize("fields, message", [
    ({"alpha": 1.5}, "alpha must be a number in [0, 1]"),
    ({"temperature": 0}, "temperature must be a positive number"),
    ({"hidden_weight": -1}, "hidden_weight must be a number >= 0"),
    ({"hidden_layers": "0"}, "hidden_layers must be a list"),
    ({"hidden_layers": [["0"]]}, "[student_name, teacher_name] pair"),
    ({"cache_teacher": "yes"}, "cache_teacher must be true or false"),
    ({"augment": 1.0}, "augment must be a share of tokens in [0, 1)"),
    ({"augment_copies": 0}, "augment_copies must be an integer >= 1"),
])
def test_bad_fields_are_named(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        DistillConfig(**fields)


def test_bad_layers_and_teachers_are_refused():
    student = mlp(0)
    with pytest.raises(ConfigError, match="student has no module 'nope'"):
        Distiller(student, mlp(1), DistillConfig(hidden_layers=["nope"]), example_batch=next(iter(data())))
    with pytest.raises(ValueError, match="example_batch"):
        Distiller(student, mlp(1), DistillConfig(hidden_layers=["0"]))
    with pytest.raises(ValueError, match="shares parameters with the student"):
        Distiller(student, student, DistillConfig())
    with pytest.raises(ValueError, match="logits .* differ"):
        wide = nn.Sequential(nn.Linear(4, 5))
        tt.train(student, data(), max_steps=1, loss_fn=F.cross_entropy, callbacks=[Distiller(student, wide)], progress=False)


def test_resume_restores_the_width_maps_exactly(tmp_path):
    """A checkpoint holds the distillation maps (the callback's own parameters), so a resumed run
    continues with the trained maps and ends where an uninterrupted one does."""
    teacher = mlp(0, hidden=16)
    shrunk = copy.deepcopy(teacher)
    tt.shrink(shrunk, 0.5, example_inputs=(torch.randn(2, 4),), measure=False)

    def run(directory, interrupt=None, resume=False, map_seed=0):
        student = copy.deepcopy(shrunk)
        torch.manual_seed(map_seed)  # a fresh process draws other initial maps: the checkpoint must not care
        distiller = Distiller(student, teacher, DistillConfig(alpha=0.5, hidden_layers=["0"]), example_batch=next(iter(data())))
        callbacks = [distiller, *([InterruptAt(interrupt)] if interrupt else [])]
        result = tt.train(student, data(n=48), epochs=2, lr=1e-2, loss_fn=F.cross_entropy, callbacks=callbacks, progress=False,
                          checkpoint=tt.CheckpointConfig(directory, every=2), resume=resume)
        return result, student, distiller.maps["0"].weight.detach().clone()

    expected, whole, whole_map = run(tmp_path / "whole")
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", interrupt=7)
    result, resumed, resumed_map = run(tmp_path / "cut", resume=True, map_seed=99)
    assert result.losses == pytest.approx(expected.losses, abs=1e-6)
    torch.testing.assert_close(resumed_map, whole_map, atol=1e-6, rtol=0)
    torch.testing.assert_close(resumed[0].weight, whole[0].weight, atol=1e-6, rtol=0)
    with pytest.raises(tt.CheckpointMismatchError, match="callback parameters"):
        student = copy.deepcopy(shrunk)
        tt.train(student, data(n=48), epochs=2, lr=1e-2, loss_fn=F.cross_entropy, progress=False,
                 checkpoint=tt.CheckpointConfig(tmp_path / "cut"), resume=True)


def token_data(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids, y = torch.randint(0, 40, (n, 7), generator=g), torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, y), batch_size=8, shuffle=True,
                                       generator=torch.Generator().manual_seed(2))


def test_augmented_loss_is_the_hand_computed_mix_over_the_batch_and_its_copies():
    from trimtune.training.token_swap import swap_tokens

    student, teacher = BagOfTokens(0), BagOfTokens(1)
    ids, y = torch.randint(0, 40, (5, 9), generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 2, 1, 0])
    alpha, T = 0.4, 2.0

    def kl(x):
        p_t = torch.softmax(teacher(x) / T, -1)
        return (p_t * (torch.log(p_t) - torch.log_softmax(student(x) / T, -1))).sum(-1).mean()

    torch.manual_seed(7)
    with torch.no_grad():
        copies = [swap_tokens(ids, None, 0.3) for _ in range(2)]
        assert all(not torch.equal(c, ids) for c in copies)
        soft = (kl(ids) + kl(copies[0]) + kl(copies[1])) / 3
        expected = (1 - alpha) * F.cross_entropy(student(ids), y) + alpha * T * T * soft
    distiller = Distiller(student, teacher, DistillConfig(alpha=alpha, temperature=T, augment=0.3, augment_copies=2))
    torch.manual_seed(7)
    result = tt.train(student, [(ids, y)], max_steps=1, optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
                      loss_fn=F.cross_entropy, callbacks=[distiller], progress=False)
    assert result.losses[0] == pytest.approx(expected.item(), rel=1e-5)
    assert distiller.teacher_calls == 3  # the batch and its two copies


def test_copies_are_labelled_by_the_teacher_every_step_and_change_training():
    def run(augment):
        student, teacher = BagOfTokens(0, dropout=0.1), BagOfTokens(1)
        distiller = Distiller(student, teacher, DistillConfig(alpha=0.5, augment=augment))
        torch.manual_seed(3)
        tt.train(student, token_data(), epochs=3, lr=1e-2, loss_fn=F.cross_entropy, callbacks=[distiller], progress=False)
        return student.embed.weight.detach(), distiller.teacher_calls

    plain, plain_calls = run(0.0)
    augmented, calls = run(0.3)
    assert (plain_calls, calls) == (3, 3 + 9)  # the batches' logits are cached after epoch 1, the copies never are
    assert not torch.allclose(plain, augmented)


def test_augmented_resume_perturbs_as_the_uninterrupted_run(tmp_path):
    def run(directory, interrupt=None, resume=False):
        student, teacher = BagOfTokens(0, dropout=0.1), BagOfTokens(1)
        distiller = Distiller(student, teacher, DistillConfig(alpha=0.5, augment=0.3))
        torch.manual_seed(99 if resume else 3)  # a fresh process's generator: the checkpoint's must win
        result = tt.train(student, token_data(n=48), epochs=2, lr=1e-2, loss_fn=F.cross_entropy,
                          callbacks=[distiller, *([InterruptAt(interrupt)] if interrupt else [])], progress=False,
                          checkpoint=tt.CheckpointConfig(directory, every=2), resume=resume)
        return result, student

    expected, whole = run(tmp_path / "whole")
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", interrupt=7)
    result, resumed = run(tmp_path / "cut", resume=True)
    assert result.losses == pytest.approx(expected.losses, abs=1e-6)
    torch.testing.assert_close(resumed.embed.weight, whole.embed.weight, atol=1e-6, rtol=0)


def test_augment_needs_token_inputs():
    student, teacher, batch = BagOfTokens(0), BagOfTokens(1), next(iter(token_data()))
    state = torch.get_rng_state()
    Distiller(student, teacher, DistillConfig(augment=0.2), example_batch=batch)
    assert torch.equal(torch.get_rng_state(), state)  # the check draws nothing: training's random stream is as without it
    student = mlp(0)
    with pytest.raises(ValueError, match="augment > 0 needs token-id inputs"):
        Distiller(student, mlp(1), DistillConfig(augment=0.2), example_batch=next(iter(data())))
    with pytest.raises(ValueError, match="augment > 0 needs token-id inputs"):
        tt.train(student, data(), max_steps=1, loss_fn=F.cross_entropy, callbacks=[Distiller(student, mlp(1), DistillConfig(augment=0.2))],
                 progress=False)


def test_augmented_distillation_of_a_causal_lm_with_padding():
    """Per-token logits: the copies keep the batch's attention mask, so padding teaches nothing there either."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=60, n_positions=16, pad_token_id=0)
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(config)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.transformer.h[1].mlp.c_fc.weight.mul_(0.5)  # the student differs, so the KL is not zero
    tt.apply(student, tt.LoraConfig(r=2, targets=["c_attn"]))
    ids = torch.randint(1, 60, (4, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[2:, 5:] = 0
    batch = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    distiller = Distiller(student, teacher, DistillConfig(alpha=0.5, augment=0.3), example_batch=batch)
    torch.manual_seed(2)
    result = tt.train(student, [batch] * 3, epochs=1, lr=1e-3, callbacks=[distiller], progress=False)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert distiller.teacher_calls == 3 + 3  # per-token logits are never cached; each step's copy too
