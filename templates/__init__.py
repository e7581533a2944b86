"""Templates that `spml init` writes into a repository (packaged as pytest_spml.templates)."""
