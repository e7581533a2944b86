"""The dataset (Fixed): y = 3x + 0.5 plus a fixed pseudo-random noise."""


def _points(start: int, count: int) -> list[tuple[float, float]]:
    state = 12345 + start
    points = []
    for i in range(start, start + count):
        state = (1103515245 * state + 12345) % 2**31
        noise = (state / 2**31 - 0.5) * 0.2
        x = i / 50.0
        points.append((x, 3.0 * x + 0.5 + noise))
    return points


def train() -> list[tuple[float, float]]:
    return _points(0, 80)


def val() -> list[tuple[float, float]]:
    return _points(80, 20)
