"""L0 rules: observability."""
