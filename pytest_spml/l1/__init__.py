"""L1 runtime validation: train the user's real pipeline for a bounded time and prove it end to end.

Importing this package never imports torch; the modules that need it do so
inside their functions, so pytest start-up stays fast.
"""

from .interface import EvaluationError, L1Pipeline, TrainState


def l1_tests():  # noqa: ANN201 - re-exported lazily so importing the package never imports pytest internals twice
    from .pytest_support import l1_tests as make

    return make()


__all__ = ["EvaluationError", "L1Pipeline", "TrainState", "l1_tests"]
