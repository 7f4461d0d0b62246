"""Exports for the runtimes models are deployed with: GGUF for llama.cpp (and ollama, LM Studio,
llama-cpp-python) and ONNX for onnxruntime. Each takes a plain, merged model in memory; loading a run
or directory and merging its adapter is the command's part (``commands/export_source.py``)."""

from .errors import ExportError
from .gguf_architectures import architecture_for_config
from .gguf_file import check_gguf_export, is_trimtune_gguf, write_gguf
from .gguf_types import output_type
from .gguf_vocab import check_tokenizer as check_gguf_tokenizer
from .onnx_check import onnxruntime_difference
from .onnx_file import is_trimtune_onnx, write_onnx

__all__ = ["ExportError", "architecture_for_config", "check_gguf_export", "check_gguf_tokenizer", "is_trimtune_gguf", "is_trimtune_onnx", "onnxruntime_difference",
           "output_type", "write_gguf", "write_onnx"]
