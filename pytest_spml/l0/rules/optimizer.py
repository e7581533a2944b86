"""L0 rules: optimizer."""
