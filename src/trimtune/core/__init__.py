"""The core: one wrapper layer (frozen base, mask, named deltas), the Delta base, layer kinds, targets,
per-model state, the method registry, the table of model architectures and generic file helpers.
It imports nothing above it (see docs/architecture.md)."""
