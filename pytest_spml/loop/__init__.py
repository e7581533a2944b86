"""Autoresearch and ml-iteration rounds: ``spml-loop run`` and ``spml-loop iterate``."""
