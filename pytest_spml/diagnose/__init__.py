"""``spml diagnose``: reproduce, isolate and explain a broken training run."""
