"""The facade's second door: what trimtune writes, written so that nothing is lost or half-changed.

Every file goes to a temporary sibling and is renamed into place (``write_json``, ``write_bytes``,
``write_safetensors``); a command's output directory is built beside its target and swapped in
when complete (``output_directory``, ``fresh_partial`` / ``swap_in``), and only a directory that
carries trimtune's marker is ever replaced (``check_replaceable``). The names of the records
trimtune's outputs hold are here too, for the tools that read them back (recipes, the CLI).
"""

from .core.io.atomic import write_bytes, write_json, write_safetensors
from .core.io.output_dir import (
    RUN_MARKER,
    OutputError,
    check_file_replaceable,
    check_replaceable,
    fresh_partial,
    output_directory,
    partial_path,
    swap_in,
    written_by_trimtune,
)
from .core.io.safetensors_files import check_model_files, read_safetensors
from .prune.sequential.stream import SOURCE_FILE
from .prune.structured.stream import REPORT as STRUCTURED_REPORT_FILE
from .shrinking.files import HISTORY_FILE

__all__ = [
    "write_bytes", "write_json", "write_safetensors", "read_safetensors", "check_model_files",
    "OutputError", "check_file_replaceable", "check_replaceable", "output_directory", "fresh_partial", "partial_path", "swap_in", "written_by_trimtune",
    "RUN_MARKER", "SOURCE_FILE", "HISTORY_FILE", "STRUCTURED_REPORT_FILE",
]
