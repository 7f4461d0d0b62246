"""The recipe section ``distill``: ``trimtune prune`` -> ``trimtune shrink --from-masks`` -> ``trimtune tune``
training the whole shrunk model with the pruned run as its teacher (the shrink's source), and bad fields."""

from __future__ import annotations

import json

import pytest
import yaml
from test_cli_commands import main


def recipe(tmp_path, name, **sections):
    raw = {"model": {"path": "lenet", "task": "image-classification"}, "data": {"train": "digits", "batch_size": 64, "limit": 300},
           "train": {"epochs": 2, "lr": 3e-3}, **sections}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_tune_after_shrink_distills_from_the_source_run(tmp_path, capsys):
    dense, small, recovered = tmp_path / "dense", tmp_path / "small", tmp_path / "recovered"
    prune = {"sparsity": 0.5, "granularity": "out", "schedule": "cubic", "timing": "during", "targets": "conv2|fc1"}
    code, _, err = main(capsys, "prune", recipe(tmp_path, "dense", prune=prune), "--out", dense, "--quiet")
    assert code == 0, err
    code, _, err = main(capsys, "shrink", dense, "--from-masks", "--out", small, "--quiet")
    assert code == 0, err
    distill = {"alpha": 0.7, "temperature": 2.0, "hidden_layers": ["fc1"]}  # fc1: 64 -> 32 units, a learned map
    code, _, err = main(capsys, "tune", recipe(tmp_path, "recover", model={"path": str(small), "task": "image-classification"},
                                               distill=distill), "--out", recovered, "--quiet")
    assert code == 0, err
    summary = json.loads((recovered / "summary.json").read_text())
    dense_summary = json.loads((dense / "summary.json").read_text())
    assert summary["teacher"] == pytest.approx(dense_summary["after"])  # the teacher is the run that was shrunk
    assert summary["before"] == pytest.approx(json.loads((small / "summary.json").read_text())["after"])
    code, out, err = main(capsys, "report", recovered)
    assert code == 0 and "accuracy.png" in out
    report = (recovered / "report" / "report.md").read_text()
    assert f"| teacher | {100 * summary['teacher']['accuracy']:.2f} % | the frozen teacher |" in report
    assert f"| recovered | {100 * summary['after']['accuracy']:.2f} % | end of the run |" in report
    code, out, err = main(capsys, "eval", recovered)  # the recovered run rebuilds: shrunk widths, trained weights
    assert code == 0, err
    assert json.loads(out.splitlines()[-1].split(": ", 1)[1])["accuracy"] == pytest.approx(summary["after"]["accuracy"])


def test_a_run_directory_as_model_path_continues_from_that_run(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    code, _, err = main(capsys, "prune", recipe(tmp_path, "first", prune={"sparsity": 0.5, "timing": "before"}), "--out", first, "--quiet")
    assert code == 0, err
    code, _, err = main(capsys, "tune", recipe(tmp_path, "second", model={"path": str(first), "task": "image-classification"},
                                               distill={"alpha": 0.5}, train={"epochs": 1}), "--out", second, "--quiet")
    assert code == 0, err
    summary, first_summary = (json.loads((d / "summary.json").read_text()) for d in (second, first))
    assert summary["before"] == pytest.approx(first_summary["after"])  # starts where the first run ended
    assert summary["teacher"] == pytest.approx(first_summary["after"])  # default teacher: the model as loaded


@pytest.mark.parametrize("distill, message", [
    ({"alpha": 2}, "distill.alpha must be a number in [0, 1], got 2"),
    ({"temperature": -1}, "distill.temperature must be a positive number"),
    ({"augment": 1}, "distill.augment must be a share of tokens in [0, 1), got 1"),
    ({"hidden_layer": ["fc1"]}, "did you mean 'hidden_layers'?"),
])
def test_bad_distill_fields_are_usage_errors(tmp_path, capsys, distill, message):
    code, _, err = main(capsys, "tune", recipe(tmp_path, "bad", distill=distill), "--out", tmp_path / "run")
    assert code == 2 and message in err and "Traceback" not in err


def test_distill_without_training_is_refused(tmp_path, capsys):
    code, _, err = main(capsys, "tune", recipe(tmp_path, "bad", distill={}, train={"epochs": 0}), "--out", tmp_path / "run")
    assert code == 2 and "distill needs training" in err


def test_unknown_hidden_layer_names_the_module(tmp_path, capsys):
    code, _, err = main(capsys, "tune", recipe(tmp_path, "bad", distill={"hidden_layers": ["fc9"]}), "--out", tmp_path / "run")
    assert code == 2 and "hidden_layers: student has no module 'fc9'" in err


def test_augment_on_image_inputs_names_the_field(tmp_path, capsys):
    code, _, err = main(capsys, "tune", recipe(tmp_path, "bad", distill={"augment": 0.3}), "--out", tmp_path / "run")
    assert code == 1 and "augment > 0 needs token-id inputs" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_tune_after_shrinking_an_adapted_run(tmp_path, capsys):
    """A shrink of a LoRA run holds the base and the shrunk adapter in separate files; tuning it again
    rebuilds both (the adapter folded in) and starts where the shrink ended, the LoRA run teaching."""
    lora, small, recovered = tmp_path / "lora", tmp_path / "small", tmp_path / "recovered"
    method = {"type": "lora", "r": 4, "targets": "conv2|fc1"}
    code, _, err = main(capsys, "tune", recipe(tmp_path, "lora", method=method), "--out", lora, "--quiet")
    assert code == 0, err
    code, _, err = main(capsys, "shrink", lora, "--ratio", "0.5", "--out", small, "--quiet")
    assert code == 0, err
    code, _, err = main(capsys, "tune", recipe(tmp_path, "recover", model={"path": str(small), "task": "image-classification"},
                                               method=method, distill={"alpha": 0.5}, train={"epochs": 1}), "--out", recovered, "--quiet")
    assert code == 0, err
    summary, shrunk, source = (json.loads((d / "summary.json").read_text()) for d in (recovered, small, lora))
    assert summary["before"] == pytest.approx(shrunk["after"])  # the shrunk model with its shrunk adapter
    assert shrunk["after"] != pytest.approx(shrunk["before"])  # (the shrink did change it)
    assert summary["teacher"] == pytest.approx(source["after"])
