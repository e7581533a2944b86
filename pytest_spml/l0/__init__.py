"""L0 static checks: a linter for PyTorch training code that never imports or runs it."""
