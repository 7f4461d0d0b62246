"""Issue 27, "lose nothing, part 2", for the LLM paths (prune_sequential, `trimtune prune --model`,
`trimtune eval --perplexity`): a refusal leaves the model and the disk as they were and names the problem."""

from __future__ import annotations

import pytest
import torch
from test_llm_prune_cli import llama_dir, text_file  # noqa: F401  (module fixtures)

from trimtune.cli import main
from trimtune.core.tuned_layer import TunedLayer
from trimtune.prune.sequential import SequentialConfig, prune_sequential


def test_a_singular_hessian_leaves_the_block_as_it_was(tiny_llama):
    """Item 3: 40 tokens give q..up (32 inputs) full-rank Hessians and down_proj (64 inputs) a singular
    one; with percdamp=0 the block's last layer fails after six were pruned: all seven are put back."""
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    samples = torch.randint(3, 100, (2, 20), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj: the calibration Hessian is not positive definite"):
        prune_sequential(tiny_llama, samples, SequentialConfig("sparsegpt", 0.5, blocksize=16, percdamp=0.0))
    assert not any(isinstance(m, TunedLayer) for m in tiny_llama.modules())
    after = tiny_llama.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_cli_singular_hessian_is_trimtunes_message(llama_dir, text_file, tmp_path, capsys):  # noqa: F811
    """Item 3, CLI: one 40-token window gives a Hessian that factors while its inverse does not (raw _LinAlgError before)."""
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(llama_dir), "--calib", str(text_file), "--nsamples", "1", "--seqlen", "40",
                 "--blocksize", "16", "--percdamp", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "not positive definite even with percdamp=0.0" in err and "LinAlgError" not in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def bert_classifier_dir(tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from trimtune.models import minilm_path

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=30522,
                        max_position_embeddings=64, num_labels=2)
    path = tmp_path_factory.mktemp("cls") / "bert-cls"
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return path


def test_perplexity_refuses_a_head_made_up_on_load(bert_classifier_dir, text_file, capsys):  # noqa: F811
    """Item 6: a BERT classifier has no LM head; the one transformers would make is random."""
    code = main(["eval", "--model", str(bert_classifier_dir), "--perplexity", str(text_file), "--seqlen", "16"])
    captured = capsys.readouterr()
    assert code == 1 and "perplexity:" not in captured.out
    assert "cannot serve as a causal LM for --perplexity" in captured.err and "cls.predictions" in captured.err, captured.err


def test_perplexity_never_unpickles(llama_dir, text_file, tmp_path, capsys):  # noqa: F811
    """Item 7: a directory with only pytorch_model.bin is refused with the message every other path gives."""
    import shutil

    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(llama_dir, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    code = main(["eval", "--model", str(pickled), "--perplexity", str(text_file), "--seqlen", "16"])
    captured = capsys.readouterr()
    assert code == 1 and "perplexity:" not in captured.out
    assert "holds only PyTorch pickle weights (pytorch_model.bin)" in captured.err, captured.err


@pytest.mark.parametrize("flag", ["--seqlen", "--stride"])
def test_perplexity_refuses_zero_windows(llama_dir, text_file, capsys, flag):  # noqa: F811
    """Partial item: --seqlen 0 and --stride 0 were replaced by the defaults."""
    code = main(["eval", "--model", str(llama_dir), "--perplexity", str(text_file), flag, "0"])
    captured = capsys.readouterr()
    assert code == 1 and "perplexity:" not in captured.out and f"{flag[2:]}=0" in captured.err, captured.err


def test_prune_model_refuses_overwrite_and_an_out_inside_the_input(llama_dir, tmp_path, capsys):  # noqa: F811
    """Partial items: --overwrite was ignored with --model; an --out inside the input directory was accepted."""
    before = sorted(p.name for p in llama_dir.iterdir())
    for extra, reason in [(["--out", str(llama_dir / "pruned")], "is, or is inside, the input model directory"),
                          (["--out", str(tmp_path / "new"), "--overwrite"], "--overwrite is not supported with --model")]:
        code = main(["prune", "--model", str(llama_dir), "--method", "magnitude", *extra])
        err = capsys.readouterr().err
        assert code == 1 and reason in err, err
    assert sorted(p.name for p in llama_dir.iterdir()) == before and not (tmp_path / "new").exists()


def test_damaged_files_are_named(llama_dir, text_file, tmp_path, capsys):  # noqa: F811
    """Partial item: a truncated shard or an index mapping a tensor to the wrong shard gave a bare
    SafetensorError (prune, eval); a text file that is not UTF-8 a raw UnicodeDecodeError."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    truncated = tmp_path / "truncated"
    shutil.copytree(llama_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    sharded = tmp_path / "sharded"
    shutil.copytree(llama_dir, sharded)
    tensors = load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[:5]}, sharded / "model-00001-of-00002.safetensors")
    save_file({k: tensors[k] for k in keys[5:]}, sharded / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys}  # wrong for every key after the fifth
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cases = [(truncated, f"{weights} is not a readable safetensors file"), (sharded, f"maps {keys[5]} to model-00001-of-00002")]
    for directory, reason in cases:
        for argv in (["prune", "--model", str(directory), "--method", "magnitude", "--out", str(tmp_path / "out")],
                     ["eval", "--model", str(directory), "--perplexity", str(text_file), "--seqlen", "16"]):
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 1 and reason in err and "UnreadableFileError" in err, (argv, err)

    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    for argv in (["eval", "--model", str(llama_dir), "--perplexity", str(latin), "--seqlen", "16"],
                 ["prune", "--model", str(llama_dir), "--calib", str(latin), "--nsamples", "1", "--seqlen", "4", "--out", str(tmp_path / "o")]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 1 and f"text file {latin} is not UTF-8: byte 3 (0xe9)" in err, err


def test_a_killed_writers_build_directory_is_reclaimed(llama_dir, tmp_path, capsys):  # noqa: F811
    """Partial item: a SIGKILLed `prune --model` left `.OUT.xxxx.tmp` that nothing reclaimed. The next run
    into the same --out removes the build directories of writers that are gone, never a live one's."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f".pruned.pid{gone}.k1ll3d.tmp"
    live = tmp_path / f".pruned.pid{__import__('os').getpid()}.w0rk1ng.tmp"
    for leftover in (orphan, live):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"half a shard")
    assert main(["prune", "--model", str(llama_dir), "--method", "magnitude", "--out", str(tmp_path / "pruned"), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "pruned"]
