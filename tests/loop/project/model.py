"""The model and how it is fitted (Variable): rounds may change anything here."""


def fit(points, config, log):
    w, b = 0.0, 0.0
    lr = config["lr"]
    n = len(points)
    for step in range(config["steps"]):
        grad_w = grad_b = loss = 0.0
        for x, y in points:
            err = w * x + b - y
            loss += err * err / n
            grad_w += 2 * err * x / n
            grad_b += 2 * err / n
        w -= lr * grad_w
        b -= lr * grad_b
        log(step, loss)
    return w, b
