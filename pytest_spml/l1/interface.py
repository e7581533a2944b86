"""The interface a user implements once, in ``conftest.py``, to put their pipeline under L1.

Subclass :class:`L1Pipeline`, implement ``build``, ``batches`` and
``train_step`` (your own step: forward, backward, optimizer and scheduler),
and ``evaluate`` if your plan evaluates; the checkpoint and inference hooks
have defaults that fit most PyTorch code. Expose it to pytest with a fixture::

    # conftest.py
    import pytest
    from my_project.l1 import MyPipeline

    @pytest.fixture(scope="session")
    def spml_pipeline():
        return MyPipeline()

or name it in the ini file: ``spml_l1_pipeline = my_project.l1:MyPipeline``.
L1 bounds training through these hooks (how many steps it asks for), never
by patching your code.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported only where L1 actually runs
    import torch


EVAL_MODES = ("in-memory", "checkpoint")


class EvaluationError(RuntimeError):
    """An evaluation failed; the message names the entry mode (and the checkpoint, when there is one)."""

    def __init__(self, mode: str, message: str, checkpoint: str | Path | None = None):
        where = f" (checkpoint {checkpoint})" if checkpoint else ""
        super().__init__(f"{mode} evaluation failed{where}: {message}")
        self.mode = mode
        self.checkpoint = checkpoint


@dataclass
class TrainState:
    """Everything a training run carries between steps."""

    model: "torch.nn.Module"
    optimizer: "torch.optim.Optimizer"
    scheduler: Any = None
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class L1Pipeline:
    """Your training pipeline, as L1 drives it. Override what does not fit the defaults."""

    #: shown in reports
    name: str = "pipeline"
    #: planned evaluation cadence in optimizer steps (None: the plan does not evaluate during training)
    eval_every: int | None = None
    #: tokens per sample, for tokens/s (None: not a token model)
    tokens_per_sample: int | None = None

    device: "torch.device"

    # ------------------------------------------------------------------ required

    def build(self) -> TrainState:
        """Build model, optimizer and scheduler on ``self.device``, freshly initialised."""
        raise NotImplementedError("L1Pipeline.build(): return TrainState(model, optimizer, scheduler)")

    def batches(self) -> Iterator[Any]:
        """Training batches, in a deterministic order for a given seed (L1 seeds before calling)."""
        raise NotImplementedError("L1Pipeline.batches(): yield training batches")

    def train_step(self, state: TrainState, batch: Any) -> "torch.Tensor | float":
        """One optimizer step of your own code (forward, backward, step, scheduler); return the loss."""
        raise NotImplementedError("L1Pipeline.train_step(): run one step and return the loss")

    # ------------------------------------------------------------------ evaluation (one core, two modes)

    def evaluate(self, model: "torch.nn.Module", mode: str) -> dict[str, float]:
        """Evaluate ``model``; ``mode`` is "in-memory" or "checkpoint". Return metrics plus ``{"mode": mode}``."""
        raise NotImplementedError

    def evaluate_checkpoint(self, path: Path) -> dict[str, float]:
        """Checkpoint-based entry: load ``path`` and run the same evaluator core."""
        try:
            state = self.load_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - re-raised with the mode, as the plan gate asks
            raise EvaluationError("checkpoint", f"{type(exc).__name__}: {exc}", path) from exc
        return self.evaluate(state.model, mode="checkpoint")

    @property
    def evaluates(self) -> bool:
        return type(self).evaluate is not L1Pipeline.evaluate

    # ------------------------------------------------------------------ defaults

    def setup(self, device: "torch.device", seed: int) -> None:
        """Called once before anything else; seeds Python, NumPy (if present) and torch."""
        import torch

        self.device = device
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            import numpy

            numpy.random.seed(seed % 2**32)
        except ImportError:
            pass

    def batch_size(self, batch: Any) -> int:
        """Samples in a batch: the length of the first tensor found."""
        tensor = _first_tensor(batch)
        return int(tensor.shape[0]) if tensor is not None and tensor.dim() > 0 else 1

    def inputs(self, batch: Any) -> Any:
        """The model input of a batch (default: the first element of a tuple/list, else the batch)."""
        return batch[0] if isinstance(batch, (tuple, list)) else batch

    def infer(self, model: "torch.nn.Module", batch: Any) -> "torch.Tensor":
        """Inference on one batch, in eval mode without gradients."""
        import torch

        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                return model(self.inputs(batch))
        finally:
            model.train(was_training)

    def save_checkpoint(self, state: TrainState, path: Path) -> None:
        """Model, optimizer, scheduler, step and every RNG state, as state dicts."""
        import torch

        torch.save({
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
            "step": state.step,
            "rng": rng_state(),
        }, path)

    def load_checkpoint(self, path: Path) -> TrainState:
        """A fresh :meth:`build`, then every state dict and RNG state from ``path``."""
        import torch

        saved = torch.load(path, map_location=self.device, weights_only=False)
        state = self.build()
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        if state.scheduler is not None and saved.get("scheduler") is not None:
            state.scheduler.load_state_dict(saved["scheduler"])
        state.step = saved.get("step", 0)
        if saved.get("rng") is not None:
            set_rng_state(saved["rng"])
        return state


def import_pipeline_target(target: str) -> Any:
    """The object a ``spml_l1_pipeline`` target names: ``package.module:Attribute`` or ``path/to/file.py:Attribute``.

    The attribute defaults to ``Pipeline``. A file path is imported with its folder first on
    ``sys.path``, as ``python path/to/file.py`` would, so its sibling modules import too. Raises
    ImportError or AttributeError (SyntaxError and the module's own errors propagate) for the caller to report.
    """
    import importlib
    import importlib.util
    import sys

    module_name, _, attr = target.rpartition(":") if ":" in target else (target, "", "")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise ImportError(f"no such file: {module_name}")
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {module_name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # classes pickle (torch.save) by module name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(path.stem, None)
            raise
    else:
        module = importlib.import_module(module_name)
    return getattr(module, attr or "Pipeline")


def _first_tensor(batch: Any) -> "torch.Tensor | None":
    import torch

    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)):
        for item in batch:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(batch, dict):
        for item in batch.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        state["numpy"] = numpy.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])
