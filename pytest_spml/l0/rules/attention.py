"""L0 rules: attention."""
