"""L0 rules: precision."""
