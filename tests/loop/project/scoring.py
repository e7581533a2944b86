"""The score (Fixed): 1 / (1 + mean squared error); higher is better."""


def score(predictions: list[float], targets: list[float]) -> float:
    mse = sum((p - t) * (p - t) for p, t in zip(predictions, targets)) / len(targets)
    return 1.0 / (1.0 + mse)
