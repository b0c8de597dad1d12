"""(w) The gradient-flow optimizers on real images: scikit-learn's handwritten digits (1,797 8×8 images, the copy
that ships inside scikit-learn: nothing is downloaded), an MLP 64-64-10 (tanh, softmax cross-entropy, float32),
minibatches of 50, against sgd, momentum and adam.

    pip install ".[bench]"     # scikit-learn, matplotlib
    python benchmarks/optim_digits.py --epochs 30 --seeds 10 --out benchmarks/results/optim_digits

Split (fixed): 1,000 training, 297 validation, 500 test images. Each method's learning rate (for the adaptive
integrators: their tolerance, rtol = atol, with a first step of 0.1) is the best of a grid by validation
loss after the last epoch, mean over 3 tuning seeds (a diverged run counts as infinite); then ``--seeds`` fresh seeds (initial weights and
batch order) train at that setting. Reported per method: test accuracy and loss after the last epoch (mean and
spread over the seeds), the gradient evaluations it spent (Runge-Kutta stages and the adaptive pairs' rejected
attempts included; Taylor-2's Hessian-vector product counted as one more), the test accuracy at SGD's budget of
gradient evaluations, the wall time of one epoch (one seed, compiled, median of 5) and, for the adaptive pairs,
the step their controller chose (the learning rate) and the share of attempts rejected. Curves against epochs
and against gradient evaluations go to ``--out`` (JSON and a PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import format_table

from jaxnls import optim

BATCH = 50
TRAIN, VALIDATION = 1000, 297
HIDDEN = 64
TUNING_SEEDS = 3
STEP_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
TOLERANCE_GRID = (1e-1, 1e-2, 1e-3, 1e-4)
FIRST_STEP = 0.1

#: name -> (transformation from the tuned value, takes grad_fn, gradient evaluations per step, grid).
#: The adaptive pairs' evaluations per attempt; their count is read from their state (attempts, not steps).
METHODS = {
    "sgd (= optim.euler)": (optax.sgd, False, 1, STEP_GRID),
    "momentum 0.9": (lambda lr: optax.sgd(lr, momentum=0.9), False, 1, STEP_GRID),
    "adam": (optax.adam, False, 1, ADAM_GRID),
    "optim.adams_bashforth(2)": (lambda lr: optim.adams_bashforth(lr, order=2), False, 1, STEP_GRID),
    "optim.heun": (optim.heun, True, 2, STEP_GRID),
    "optim.midpoint": (optim.midpoint, True, 2, STEP_GRID),
    "optim.taylor2": (optim.taylor2, True, 2, STEP_GRID),
    "optim.rk4": (optim.rk4, True, 4, STEP_GRID),
    "optim.heun_euler (adaptive)": (
        lambda tol: optim.heun_euler(FIRST_STEP, rtol=tol, atol=tol),
        True,
        2,
        TOLERANCE_GRID,
    ),
    "optim.bogacki_shampine (adaptive)": (
        lambda tol: optim.bogacki_shampine(FIRST_STEP, rtol=tol, atol=tol),
        True,
        4,
        TOLERANCE_GRID,
    ),
}


def load_digits():
    """(train, validation, test) as ((N, 64) float32 in [0, 1], (N,) int32 labels), one fixed shuffle."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    order = np.random.default_rng(0).permutation(data.target.shape[0])
    x = (data.data[order] / 16.0).astype(np.float32)
    y = data.target[order].astype(np.int32)
    cut = (TRAIN, TRAIN + VALIDATION)
    return (x[: cut[0]], y[: cut[0]]), (x[cut[0] : cut[1]], y[cut[0] : cut[1]]), (x[cut[1] :], y[cut[1] :])


def init_mlp(key):
    sizes = (64, HIDDEN, 10)
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a), jnp.zeros((b,), jnp.float32))
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def logits(params, x):
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def loss(params, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y))


def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(logits(params, x), axis=-1) == y)


def make_training(name, value, epochs, data):
    """``run(key) -> per-epoch metrics`` (train loss, validation loss and accuracy, test loss and accuracy,
    gradient evaluations so far), vmappable over keys."""
    build, extra, per_step, _ = METHODS[name]
    opt = build(value)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (tuple(map(jnp.asarray, part)) for part in data)
    steps = TRAIN // BATCH
    adaptive = "adaptive" in name

    def batch_step(carry, batch):
        params, state = carry
        x, y = batch

        def grad_fn(p):
            return jax.grad(loss)(p, x, y)

        grads = grad_fn(params)
        if extra:
            updates, state = opt.update(grads, state, params, grad_fn=grad_fn)
        else:
            updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    def epoch(carry, key):
        params, state, spent = carry
        order = jax.random.permutation(key, TRAIN)[: steps * BATCH].reshape(steps, BATCH)
        (params, state), _ = jax.lax.scan(batch_step, (params, state), (x_train[order], y_train[order]))
        spent = spent + (0 if adaptive else steps * per_step)
        total = state.count * per_step if adaptive else spent
        metrics = (
            loss(params, x_train, y_train),
            loss(params, x_val, y_val),
            accuracy(params, x_val, y_val),
            loss(params, x_test, y_test),
            accuracy(params, x_test, y_test),
            total,
            state.step_size if adaptive else jnp.float32(jnp.nan),  # the step the controller chose
            state.rejections if adaptive else jnp.int32(0),
        )
        return (params, state, spent), metrics

    def run(key):
        init_key, order_key = jax.random.split(key)
        params = init_mlp(init_key)
        carry = (params, opt.init(params), jnp.zeros((), jnp.int32))
        _, metrics = jax.lax.scan(epoch, carry, jax.random.split(order_key, epochs))
        return metrics

    return run


def epoch_seconds(name, value, data, repeats=5):
    """Wall time of one compiled epoch, one seed (median of ``repeats`` after a warm-up)."""
    run = jax.jit(make_training(name, value, 1, data))
    key = jax.random.PRNGKey(123)
    jax.block_until_ready(run(key))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(key))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--only", default=None, help="comma-separated method names (default: all)")
    parser.add_argument("--out", default=None, help="folder for the curves (JSON, PNG)")
    args = parser.parse_args()
    data = load_digits()
    names = list(METHODS) if args.only is None else [n.strip() for n in args.only.split(",")]
    results = {}
    for name in names:
        grid = METHODS[name][3]
        scores = []
        for value in grid:
            run = jax.jit(jax.vmap(make_training(name, value, args.epochs, data)))
            metrics = run(jax.random.split(jax.random.PRNGKey(1000), TUNING_SEEDS))
            final = np.asarray(metrics[1])[:, -1]  # validation loss (a diverged run: infinite)
            scores.append(float(np.mean(np.where(np.isfinite(final), final, np.inf))))
        best = grid[int(np.argmin(scores))]
        run = jax.jit(jax.vmap(make_training(name, best, args.epochs, data)))
        metrics = [np.asarray(m) for m in run(jax.random.split(jax.random.PRNGKey(2000), args.seeds))]
        results[name] = dict(
            setting=best,
            tuning_validation_loss=dict(zip(map(str, grid), scores)),
            train_loss=metrics[0].tolist(),
            validation_loss=metrics[1].tolist(),
            validation_accuracy=metrics[2].tolist(),
            test_loss=metrics[3].tolist(),
            test_accuracy=metrics[4].tolist(),
            gradient_evaluations=metrics[5].tolist(),
            step_size=metrics[6].tolist(),
            rejections=metrics[7].tolist(),
            epoch_seconds=epoch_seconds(name, best, data),
        )
        print(f"  {name}: setting {best:g}, test accuracy {metrics[4][:, -1].mean():.4f}", flush=True)

    sgd_budget = None
    if "sgd (= optim.euler)" in results:
        sgd_budget = np.asarray(results["sgd (= optim.euler)"]["gradient_evaluations"])[0, -1]
    rows = []
    for name, r in results.items():
        accuracy_final = np.asarray(r["test_accuracy"])[:, -1]
        loss_final = np.asarray(r["test_loss"])[:, -1]
        spent = np.asarray(r["gradient_evaluations"])
        at_budget = "-"
        if sgd_budget is not None:
            # each seed's test accuracy after its last epoch within SGD's budget of gradient evaluations
            within = [np.flatnonzero(s <= sgd_budget) for s in spent]
            values = [np.asarray(r["test_accuracy"])[i, w[-1]] for i, w in enumerate(within) if w.size]
            at_budget = f"{np.mean(values):.4f}" if values else "-"
        rows.append(
            [
                name,
                f"{r['setting']:g}",
                f"{accuracy_final.mean():.4f} ± {accuracy_final.std():.4f}",
                f"{accuracy_final.min():.4f}",
                f"{loss_final.mean():.4f} ± {loss_final.std():.4f}",
                f"{int(np.median(spent[:, -1])):,}",
                at_budget,
                f"{1e3 * r['epoch_seconds']:.1f}",
                adaptive_summary(r),
            ]
        )
    print(
        f"(w) digits, MLP 64-{HIDDEN}-10, {args.epochs} epochs of {TRAIN // BATCH} minibatches of {BATCH}, "
        f"{args.seeds} seeds; test set of {1797 - TRAIN - VALIDATION}"
    )
    print(
        format_table(
            [
                "method",
                "lr / tol",
                "test acc (mean ± sd)",
                "worst seed",
                "test loss",
                "grad evals",
                "acc at SGD's budget",
                "ms / epoch",
                "adaptive: last step (median, range), rejected",
            ],
            rows,
        )
    )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "curves.json"), "w") as f:
            json.dump(results, f)
        plot(results, os.path.join(args.out, "curves.png"))


def adaptive_summary(r) -> str:
    """The adaptive pairs' chosen step after the last epoch (median and range over seeds) and the share of
    attempts they rejected; "-" for the fixed-step methods."""
    steps = np.asarray(r["step_size"])[:, -1]
    if not np.all(np.isfinite(steps)):
        return "-"
    attempts = TRAIN // BATCH * np.asarray(r["step_size"]).shape[1]
    rejected = np.asarray(r["rejections"])[:, -1].mean() / attempts
    return f"{np.median(steps):.3g} ({steps.min():.3g}-{steps.max():.3g}), {100 * rejected:.1f}%"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for name, r in results.items():
        accuracy_curves = np.asarray(r["test_accuracy"])
        mean, low, high = accuracy_curves.mean(0), accuracy_curves.min(0), accuracy_curves.max(0)
        epochs = np.arange(1, mean.shape[0] + 1)
        spent = np.median(np.asarray(r["gradient_evaluations"]), axis=0)
        for ax, x in ((axes[0], epochs), (axes[1], spent)):
            (line,) = ax.plot(x, mean, label=name)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("gradient evaluations")
    axes[1].set_xscale("log")
    axes[0].set_ylabel("test accuracy (mean; band: min-max over seeds)")
    axes[0].set_ylim(0.5, 1.0)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("digits, MLP 64-64-10: test accuracy against epochs and against gradient evaluations")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
