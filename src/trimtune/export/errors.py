"""The one error an export raises for input it cannot write, before any file is written."""


class ExportError(ValueError):
    """The model, tokenizer or requested type cannot be exported; the message says why and what to do."""
