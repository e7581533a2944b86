"""L0 rules: dataloader."""
