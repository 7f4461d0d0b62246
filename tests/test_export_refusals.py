"""Each input `trimtune export --format gguf|onnx` cannot write is refused with one clear line before any
file is written, and an interrupted export leaves nothing at --out. No runtime is needed here."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from gguf_models import causal_lm_dir

from trimtune.cli import main


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return causal_lm_dir(tmp_path_factory.mktemp("refusals") / "llama", "llama")


def refused(capsys, source, out, *extra) -> str:
    """The one error line; --out is as it was (absent, or the same bytes)."""
    capsys.readouterr()  # what making the fixtures printed
    before = out.read_bytes() if out.is_file() else None
    code = main(["export", str(source), "--out", str(out), "--quiet", *map(str, extra)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert (out.read_bytes() if out.is_file() else None) == before
    return err


def test_architecture_gguf_cannot_express(llama_dir, tmp_path, capsys, minilm_path):
    err = refused(capsys, minilm_path, tmp_path / "m.gguf", "--format", "gguf")
    assert "model type 'bert' cannot be exported to GGUF: an encoder" in err and "use --format onnx" in err
    scaled = causal_lm_dir(tmp_path / "scaled", "llama", rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert "rope scaling 'linear'" in refused(capsys, scaled, tmp_path / "s.gguf", "--format", "gguf")
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    classifier = tmp_path / "cls"
    LlamaForSequenceClassification(AutoConfig.from_pretrained(llama_dir)).save_pretrained(classifier)
    AutoTokenizer.from_pretrained(llama_dir).save_pretrained(classifier)
    assert "is a LlamaForSequenceClassification, not a causal LM" in refused(capsys, classifier, tmp_path / "c.gguf", "--format", "gguf")
    gelu = causal_lm_dir(tmp_path / "gelu", "llama", hidden_act="gelu")
    assert "SwiGLU with silu; this model uses 'gelu'" in refused(capsys, gelu, tmp_path / "g.gguf", "--format", "gguf")


def test_tokenizer_gguf_cannot_carry(tmp_path, capsys, minilm_path):
    from transformers import AutoTokenizer

    wordpiece = causal_lm_dir(tmp_path / "wp", "llama", tokenizer=AutoTokenizer.from_pretrained(minilm_path))
    assert "WordPiece" in refused(capsys, wordpiece, tmp_path / "w.gguf", "--format", "gguf")


def test_model_directory_without_a_tokenizer(llama_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    bare = tmp_path / "bare"
    AutoModelForCausalLM.from_pretrained(llama_dir).save_pretrained(bare)
    assert "has no tokenizer" in refused(capsys, bare, tmp_path / "b.gguf", "--format", "gguf")


def test_an_adapter_directory_is_not_a_model(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for fmt in ("gguf", "onnx"):
        assert "is an adapter (adapter_config.json), not a model" in refused(capsys, adapter, tmp_path / f"a.{fmt}", "--format", fmt)


def test_out_equal_to_or_inside_the_source(llama_dir, capsys):
    before = sorted(p.name for p in llama_dir.iterdir())
    for out in (llama_dir, llama_dir / "model.gguf"):
        assert "which this command reads" in refused(capsys, llama_dir, out, "--format", "gguf")
    assert sorted(p.name for p in llama_dir.iterdir()) == before


@pytest.mark.parametrize("outtype, message", [("q9_9", "not a type the gguf package knows; it writes: f32, f16"),
                                              ("q4_k", "cannot quantise to it (only llama.cpp's llama-quantize can)")])
def test_output_type_gguf_cannot_write(llama_dir, tmp_path, capsys, outtype, message):
    assert message in refused(capsys, llama_dir, tmp_path / "m.gguf", "--format", "gguf", "--outtype", outtype)


def test_overwrite_replaces_only_a_file_trimtune_wrote(llama_dir, tmp_path, capsys):
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"not ours")
    assert "not written by trimtune" in refused(capsys, llama_dir, foreign, "--format", "gguf", "--overwrite")
    assert foreign.read_bytes() == b"not ours"
    ours = tmp_path / "ours.gguf"
    assert main(["export", str(llama_dir), "--format", "gguf", "--out", str(ours), "--quiet"]) == 0
    assert "already exists; pass --overwrite" in refused(capsys, llama_dir, ours, "--format", "gguf")
    assert main(["export", str(llama_dir), "--format", "gguf", "--out", str(ours), "--outtype", "f32", "--overwrite", "--quiet"]) == 0
    assert gguf.GGUFReader(ours).tensors[0].tensor_type == gguf.GGMLQuantizationType.F32


def test_an_interrupted_export_leaves_nothing(llama_dir, tmp_path, capsys, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", interrupted)
    assert main(["export", str(llama_dir), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 1
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no file, and no temporary one beside it
