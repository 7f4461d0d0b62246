"""The model-level verbs built over every method: merging and unloading (``adapters.py``) and adapter
files dispatched by method (``files.py``). ``import trimtune as tt`` names them with the rest."""
