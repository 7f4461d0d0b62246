"""One package per tuning method. Each holds everything about its method: config, delta or model-level
apply, training hooks, file format. The facade (``trimtune/__init__.py``) imports each method's config,
which registers it (``core/method.register``): that import is the one line a new method adds."""
