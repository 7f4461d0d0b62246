"""Generic files: atomic writes, base fingerprints, the PEFT adapter format and its tensor files."""
