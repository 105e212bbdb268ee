"""Repository scripts: the stub generator and the one-shot GPU check (not shipped)."""
