"""Profiling toolkit (packaged as pytest_spml.toolkit)."""
