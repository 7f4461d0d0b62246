"""Issue 27, "lose nothing, part 2": each case tried a bad input that used to lose work or data, leave a
model half-changed, give a silently wrong result, or refuse with a raw or wrong message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from trimtune import cli

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "reviews.csv"


@pytest.fixture(scope="module")
def bert_recipe(tmp_path_factory) -> Path:
    """A tiny BERT classifier with MiniLM's tokenizer, LoRA on the 12 example reviews, 4 steps with a
    checkpoint after each."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from trimtune.models import minilm_path

    root = tmp_path_factory.mktemp("lose2")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=30522, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(root / "bert")
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(root / "bert")
    raw = {
        "model": {"path": str(root / "bert")},
        "data": {"train": str(DATA), "eval_fraction": 0.34, "batch_size": 4, "max_length": 24},
        "method": {"type": "lora", "r": 4, "alpha": 8, "targets": "query|value", "modules_to_save": ["classifier"]},
        "train": {"epochs": 2, "lr": 0.01, "checkpoint_every": 1, "keep_checkpoints": 3},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_overwrite_never_replaces_the_run_a_tune_reads(tmp_path, bert_recipe, capsys):
    """Item 1: --out equal to model.path (also through a symlink, `..` or a trailing slash) is refused."""
    base = tmp_path / "runs" / "base"
    assert cli.main(["tune", str(bert_recipe), "--out", str(base), "--quiet"]) == 0
    before = snapshot(base)
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    for model_path, out in [(base, base), (base, f"{base}/"), (tmp_path / "link" / "base", base),
                            (base, tmp_path / "runs" / "x" / ".." / "base"), (base, tmp_path / "runs")]:
        capsys.readouterr()
        code = cli.main(["tune", str(bert_recipe), "--set", f"model.path={model_path}", "--out", str(out), "--overwrite", "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and "which this command reads" in err, (model_path, out, err)
    assert snapshot(base) == before
    code = cli.main(["prune", str(bert_recipe), "--set", f"model.path={base}", "--set", "prune.sparsity=0.5",
                     "--out", str(base), "--overwrite", "--quiet"])
    assert code == 1 and "which this command reads" in capsys.readouterr().err and snapshot(base) == before


def test_a_rerun_without_resume_keeps_an_interrupted_runs_checkpoints(tmp_path, bert_recipe, capsys):
    """Item 2: the same command again, without --resume, refuses and names --resume; --overwrite starts over."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli.main(["tune", str(bert_recipe), "--out", str(full), "--quiet"]) == 0
    partial = tmp_path / ".cut.partial"
    shutil.copytree(full, partial)  # as if killed after its checkpoints were written
    shutil.rmtree(partial / "adapter")
    before = snapshot(partial)
    capsys.readouterr()
    assert cli.main(["tune", str(bert_recipe), "--out", str(cut), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and str(partial / "checkpoints") in err
    assert snapshot(partial) == before and not cut.exists()
    assert cli.main(["tune", str(bert_recipe), "--out", str(cut), "--overwrite", "--quiet"]) == 0
    assert not partial.exists() and (cut / "adapter").is_dir()


def test_load_shrunk_checks_everything_before_slicing_the_callers_model(tmp_path):
    """Item 4: a truncated weights file, or weights that do not fit the history, leave ``model=`` as it was."""
    import copy
    import json

    from test_shrink import ResidualNet

    from trimtune.core.io.safetensors_files import UnreadableFileError
    from trimtune.shrinking import load_shrunk, save_shrunk, shrink

    torch.manual_seed(0)
    model = ResidualNet().eval()
    fresh = copy.deepcopy(model)
    shrink(model, 0.5, example_inputs=(torch.randn(2, 3, 8, 8),))
    save_shrunk(model, tmp_path / "good")
    shapes = {k: v.shape for k, v in fresh.state_dict().items()}

    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "good", truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UnreadableFileError, match="model.safetensors"):
        load_shrunk(truncated, model=fresh)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes

    unfit = tmp_path / "unfit"
    shutil.copytree(tmp_path / "good", unfit)
    history = json.loads((unfit / "shrink_history.json").read_text())
    step = history["history"][-1]
    step["keep"] = step["keep"][:-1]  # one unit fewer than the weights were saved with
    (unfit / "shrink_history.json").write_text(json.dumps(history))
    with pytest.raises(ValueError, match="the shrink history does not match these weights"):
        load_shrunk(unfit, model=fresh)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes
    assert load_shrunk(tmp_path / "good", model=fresh) is fresh  # still loads, into the caller's model


def _bert_classifier(path: Path, vocab_size: int = 30522, tokenizer=None) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from trimtune.models import minilm_path

    torch.manual_seed(1)
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=vocab_size,
                        num_labels=2)
    BertForSequenceClassification(config).save_pretrained(path)
    (tokenizer or AutoTokenizer.from_pretrained(minilm_path())).save_pretrained(path)
    return path


def test_a_teacher_that_cannot_teach_is_refused_before_training(tmp_path, bert_recipe, capsys):
    """Item 5: a causal LM as a classification teacher (its `score` head would be random), a teacher with
    another vocabulary, and one whose embeddings are fewer than the student's token ids."""
    from transformers import AutoTokenizer, BertTokenizerFast, LlamaConfig, LlamaForCausalLM

    from trimtune.models import minilm_path

    causal = tmp_path / "causal"
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=30522, pad_token_id=0)).save_pretrained(causal)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(causal)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "soup", "was", "hot", "."]) + "\n")
    cases = [
        (causal, "cannot serve as a distillation teacher", "score.weight"),
        (_bert_classifier(tmp_path / "other-vocab", tokenizer=BertTokenizerFast(vocab_file=str(vocab))), "another vocabulary",
         "student's tokenizer"),
        (_bert_classifier(tmp_path / "small-vocab", vocab_size=100), "embeds 100 token ids", "vocab_size is at least 30522"),
    ]
    for teacher, *reasons in cases:
        out = tmp_path / f"run-{teacher.name}"
        capsys.readouterr()
        code = cli.main(["tune", str(bert_recipe), "--set", f"distill.teacher={teacher}", "--set", "distill.alpha=0.5",
                         "--out", str(out), "--quiet"])
        captured = capsys.readouterr()
        assert code == 1 and all(r in captured.err for r in reasons), (teacher, captured.err)
        assert "trained" not in captured.out and not out.exists()
    good = _bert_classifier(tmp_path / "good")
    assert cli.main(["tune", str(bert_recipe), "--set", f"distill.teacher={good}", "--set", "train.epochs=1",
                     "--out", str(tmp_path / "run-good"), "--quiet"]) == 0


@pytest.mark.slow
def test_ddp_resume_with_dropout_is_exact(tmp_path, bert_recipe):
    """Item 8: every rank's random streams are saved and restored, so 2 processes with dropout (the tiny
    BERT has dropout 0.1) resumed after step 2 end exactly where the uninterrupted run does."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trimtune", "tune",
                str(bert_recipe), "--quiet", "--out"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    result = subprocess.run([*torchrun, str(full)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(full, cut)  # as if killed after step 2
    for name in ("step-00000003", "step-00000004"):
        shutil.rmtree(cut / "checkpoints" / name)
    shutil.rmtree(cut / "adapter")
    result = subprocess.run([*torchrun, str(cut), "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ended, resumed = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (full, cut))
    assert ended.keys() == resumed.keys()
    for key in ended:
        torch.testing.assert_close(resumed[key], ended[key], atol=1e-6, rtol=0)


def test_a_refused_resume_keeps_the_runs_recipe_and_advice_names_the_flag(tmp_path, bert_recipe, capsys):
    """Partial items: a resume refused for a changed config first overwrote the run's recipe.yaml; a base
    mismatch told CLI users `check_base=False` instead of --no-check-base; the run directory is printed."""
    from transformers import BertConfig, BertForSequenceClassification

    bert = Path(yaml.safe_load(bert_recipe.read_text())["model"]["path"])
    base = tmp_path / "base"
    shutil.copytree(bert, base)
    run = tmp_path / "run"
    assert cli.main(["tune", str(bert_recipe), "--set", f"model.path={base}", "--set", "train.epochs=1", "--out", str(run)]) == 0
    assert f"run directory: {run.resolve()}" in capsys.readouterr().out
    recipe = (run / "recipe.yaml").read_bytes()
    code = cli.main(["tune", str(bert_recipe), "--set", f"model.path={base}", "--set", "train.epochs=1", "--set", "method.r=8",
                     "--out", str(run), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "CheckpointMismatchError" in err and (run / "recipe.yaml").read_bytes() == recipe

    torch.manual_seed(5)  # another base under the same path
    config = BertConfig.from_pretrained(base)
    BertForSequenceClassification(config).save_pretrained(base)
    code = cli.main(["eval", str(run)])
    err = capsys.readouterr().err
    assert code == 1 and "BaseMismatchError" in err and "pass --no-check-base" in err and "check_base=False" not in err, err
    assert cli.main(["eval", str(run), "--no-check-base"]) == 0


def test_weights_of_other_sizes_say_what_differs_and_what_to_set(tmp_path, bert_recipe, capsys):
    """Partial item: three cases gave transformers' raw "ignore_mismatched_sizes ... look at the above report!"
    with no report: a 3-label head for 2-label data (as model and as teacher), and a shrunk model's weights
    without their shrink history."""
    three = _bert_classifier(tmp_path / "three-labels")
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(three, num_labels=3, ignore_mismatched_sizes=True)
    model.save_pretrained(three)
    for extra in (["--set", f"model.path={three}"], ["--set", f"distill.teacher={three}"]):
        code = cli.main(["tune", str(bert_recipe), *extra, "--out", str(tmp_path / "x"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and "holds a classification head for 3 labels, but the data has 2" in err and "data.labels" in err, err
        assert "above report" not in err

    run, small = tmp_path / "run", tmp_path / "small"
    assert cli.main(["tune", str(bert_recipe), "--set", "train.epochs=1", "--out", str(run), "--quiet"]) == 0
    assert cli.main(["shrink", str(run), "--ratio", "0.5", "--out", str(small), "--quiet"]) == 0
    bare = tmp_path / "bare"
    shutil.copytree(small / "model", bare)
    (bare / "shrink_history.json").unlink()
    code = cli.main(["tune", str(bert_recipe), "--set", f"model.path={bare}", "--out", str(tmp_path / "y"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "do not have the shapes its config.json describes" in err and "shrink_history.json" in err, err


def test_a_full_disk_names_the_file_and_leaves_nothing_behind(tmp_path, bert_recipe, capsys, monkeypatch):
    """Partial item: tune and save_adapter on a full disk gave safetensors' raw SafetensorError and left
    .NAME.partial unexplained; now an OSError (ENOSPC) naming the file, the build directory kept only for its
    checkpoints (the message says so and how to finish), and removed when it has none."""
    import errno

    from safetensors import SafetensorError

    import trimtune as tt
    import trimtune.core.io.atomic as atomic

    real, full_at = atomic.save_file, ["adapter_model"]

    def full(tensors, filename, metadata=None):  # what safetensors raises when the disk fills up
        if full_at[0] in filename:
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(atomic, "save_file", full)
    tune = ["tune", str(bert_recipe), "--set", "train.epochs=1", "--set", "train.checkpoint_every=null", "--out", str(tmp_path / "run"), "--quiet"]
    assert cli.main(tune) == 1
    err = capsys.readouterr().err
    assert "OSError" in err and "No space left on device" in err and "adapter_model" in err, err
    assert f"checkpoints are kept in {tmp_path / '.run.partial'}" in err and "--resume" in err  # the final checkpoint
    full_at[0] = "nothing"  # space freed: the run finishes from its last checkpoint
    assert cli.main([*tune, "--resume"]) == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    full_at[0] = "pruned.safetensors"  # a run without training has no checkpoint: nothing is kept
    code = cli.main(["prune", str(bert_recipe), "--set", "method=null", "--set", "train.epochs=0", "--set", "prune.sparsity=0.5",
                     "--out", str(tmp_path / "pruned"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "pruned.safetensors" in err and "--resume" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    full_at[0] = "adapter_model"
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    tt.apply(model, tt.LoraConfig(r=2, targets="0"))
    with pytest.raises(OSError) as raised:
        tt.save_adapter(model, tmp_path / "adapter")
    assert raised.value.errno == errno.ENOSPC and "adapter_model" in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_late_checks_come_first_and_say_why(tmp_path, bert_recipe, capsys, monkeypatch):
    """Partial items: QLoRA without bitsandbytes failed only after loading and evaluating the model and left
    a hidden .X.partial; `data.format: hf` on an empty JSONL said "could not read ... as json:" and no reason."""
    import sys

    from trimtune.data.files import read_records

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    code = cli.main(["tune", str(bert_recipe), "--set", "method.type=qlora", "--out", str(tmp_path / "q"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and "bitsandbytes is needed for 4-bit bases: pip install bitsandbytes" in captured.err, captured.err
    assert "before:" not in captured.out and sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=f"{empty} is empty: the data needs at least one record"):
        read_records(empty, "hf")
