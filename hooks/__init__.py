"""Git hook shims for repositories that use core.hooksPath (packaged as pytest_spml.githooks)."""
