"""One module per ``trimtune`` subcommand: each builds its parser (``add``) and runs (``run``) by
calling the library; none holds logic of its own."""
