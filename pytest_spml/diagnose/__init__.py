"""``spml diagnose``: reproduce, isolate and explain a broken training run.

The triage procedure of an ML training debugger, as software. Modules, in the order the command uses them:

* :mod:`.intake` — the evidence: the log's incident (watchdog readers and detectors), config, checkpoints,
  versions, git facts.
* :mod:`.runs` — one controlled training run (fixed seed, deterministic kernels, every step observed) and its
  verdict by the watchdog's detectors.
* :mod:`.reproduce` — the replay from the nearest good checkpoint, shrunk to the fewest batches that reproduce.
* :mod:`.bisect_batches` — the first bad batch, saved, and the replay without it.
* :mod:`.data_checks` — NaN/Inf inputs, out-of-range labels, train/eval leakage, nondeterminism.
* :mod:`.bisect_config` — hyperparameters back to their last good values, one at a time.
* :mod:`.bisect_code` — ``git bisect run`` in a temporary clone, one :mod:`.runner` process per commit.
* :mod:`.hypotheses` — candidate causes, experiments, verdicts, confidence under its ceiling.
* :mod:`.incident` — ``incident.md``.

Nothing here imports torch at module level.
"""
