"""llama.cpp, through llama-cpp-python, as the runtime that checks a GGUF export: its logits for a
prompt and its greedy continuation, on the same token ids transformers is given."""

from __future__ import annotations

import contextlib

import numpy as np

SKIP_REASON = ("llama-cpp-python is not installed: PyPI ships it only as source, which compiles llama.cpp "
               "(41 min here with one build job on the shared 2-core machine), beyond CI's budget; "
               "`python benchmarks/export.py --part checks` runs these tests where it is installed")


@contextlib.contextmanager
def llama_cpp_model(path, n_ctx: int = 128):
    """The file loaded as llama.cpp runs it, with an f32 KV cache (its default f16 cache would round every key)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=1,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        yield llm
    finally:
        llm.close()


def llama_cpp_logits(path, ids: list[int]) -> np.ndarray:
    with llama_cpp_model(path) as llm:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])


def llama_cpp_greedy(path, ids: list[int], steps: int) -> list[int]:
    with llama_cpp_model(path) as llm:
        llm.eval(ids)
        out = []
        for _ in range(steps):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval(out[-1:])
        return out


def llama_cpp_tokens(path, text: str, special: bool = False) -> list[int]:
    with llama_cpp_model(path) as llm:
        return llm.tokenize(text.encode(), add_bos=True, special=special)


def llama_cpp_metadata(path) -> dict:
    with llama_cpp_model(path) as llm:
        return dict(llm.metadata)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |Δ| over the largest |logit|: an error measured against the logits' own scale."""
    return float(np.abs(got - want).max() / np.abs(want).max())
