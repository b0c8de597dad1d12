"""(g) SWAT-NN: the full-size autoencoder training and the latent search over the whole task suite.

    python benchmarks/swat.py --train 2000 --save jaxnls/swat/pretrained.eqx   # trains, saves, runs the suite
    python benchmarks/swat.py                                                  # the suite with the shipped model
    python benchmarks/run.py --only swat                                       # the same, inside run.py

For each of the 10 tasks (3,750 train / 1,250 test points): `swat.search` (latent point + threshold, 4
starts x 4 depths, Adam), then `swat.refine` (the decoded network's own parameters, same objective),
against a dense tanh network of the found depth with all 7 neurons per layer, trained by the same Adam
schedule. Reported: test MSE, non-zero weights and active neurons of each hard network, the task's test
variance (the error of the best constant), and seconds per task. float32, CPU.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _common import format_table

from jaxnls import swat

CONFIG = swat.SearchConfig(steps=1000, starts=4)


def train(steps: int, save: str | None):
    start = time.perf_counter()
    model, losses = swat.train_autoencoder(
        jax.random.PRNGKey(0), steps=steps, batch_size=64, log_every=max(steps // 20, 1), **swat.PRETRAINED_OPTIONS
    )
    seconds = time.perf_counter() - start
    if save:
        swat.save_autoencoder(save, model)
    return model, np.asarray(losses), seconds


def run(
    model=None,
    config: swat.SearchConfig = CONFIG,
    tasks=None,
    seed: int = 0,
    retrain: bool = False,
    prune_to: float | None = None,
):
    """The suite with ``model`` (default: the shipped one); ``seed`` picks the tasks' samples and the search's,
    refinement's and dense network's keys (seed 0: the figures recorded in (g)). ``retrain``: also the found
    and the dense network each retrained for ``config.steps`` more Adam steps on the error alone
    (``swat.retrain``), and a dense network trained for as many steps as the search, refinement and
    retraining together (three times ``config.steps``): the comparisons at an equal training budget of (z).
    ``prune_to``: also the found network pruned to that fraction of the dense network's weights (``swat.prune``)
    and retrained, beside the dense network retrained as long (both need ``retrain``)."""
    model = model if model is not None else swat.load_pretrained()
    figures = swat.evaluate_reconstruction(model, jax.random.PRNGKey(2024), num_networks=1024)
    rows = {}
    for name in tasks or sorted(swat.TEST_FUNCTIONS):
        task = swat.make_task(name, seed)
        x, y, xt, yt = (np.float32(a) for a in (task.x_train, task.y_train, task.x_test, task.y_test))
        start = time.perf_counter()
        found = swat.search(model, x, y, jax.random.PRNGKey(1 + 10 * seed), config)
        refined = swat.refine(model, found, x, y, jax.random.PRNGKey(2 + 10 * seed), config)
        seconds = time.perf_counter() - start
        dense = swat.train_dense(x, y, jax.random.PRNGKey(3 + 10 * seed), int(refined.network.depth), config)

        def describe(net):
            size = swat.network_size(net)
            return {
                "test_mse": float(swat.mse(net, xt, yt)),
                "nonzeros": int(size["nonzeros"]),
                "active_neurons": int(size["active_neurons"]),
            }

        rows[name] = {
            "variance": float(np.var(yt)),
            "depth": int(refined.network.depth),
            "seconds": seconds,
            "latent": describe(found.network),
            "refined": describe(refined.network),
            "dense": describe(dense),
        }
        if retrain:
            key = jax.random.PRNGKey(4 + 10 * seed)
            long = swat.SearchConfig(steps=3 * config.steps, starts=config.starts, batch_size=config.batch_size)
            rows[name]["retrained"] = describe(swat.retrain(refined.network, x, y, key, config))
            rows[name]["dense_retrained"] = describe(swat.retrain(dense, x, y, key, config))
            if prune_to is not None:
                budget = int(prune_to * rows[name]["dense"]["nonzeros"])
                pruned = swat.prune(refined.network, budget)
                rows[name]["pruned"] = describe(swat.retrain(pruned, x, y, key, config))
            rows[name]["dense_long"] = describe(
                swat.train_dense(x, y, jax.random.PRNGKey(3 + 10 * seed), rows[name]["depth"], long)
            )
    return {"reconstruction": figures, "tasks": rows}


def summarize(result) -> str:
    rec = result["reconstruction"]
    head = (
        f"(g) SWAT-NN — held-out functional reconstruction MSE {rec['reconstruction']:.4f} vs trivial baseline "
        f"(each network's mean output) {rec['baseline']:.4f}\n"
    )
    rows = []
    for name, r in result["tasks"].items():
        rows.append(
            [
                name,
                f"{r['variance']:.3f}",
                r["depth"],
                f"{r['latent']['test_mse']:.4f}",
                f"{r['refined']['test_mse']:.5f}",
                f"{r['refined']['nonzeros']}/{r['refined']['active_neurons']}",
                f"{r['dense']['test_mse']:.5f}",
                f"{r['dense']['nonzeros']}/{r['dense']['active_neurons']}",
                f"{r['seconds']:.1f}",
            ]
        )
    table = format_table(
        [
            "task",
            "test var",
            "depth",
            "latent MSE",
            "SWAT MSE",
            "SWAT nz/neurons",
            "dense MSE",
            "dense nz/neurons",
            "s",
        ],
        rows,
    )
    ratios = [r["refined"]["test_mse"] / r["dense"]["test_mse"] for r in result["tasks"].values()]
    sparsity = [r["refined"]["nonzeros"] / r["dense"]["nonzeros"] for r in result["tasks"].values()]
    return (
        head + table + f"\nmedian SWAT/dense test MSE {np.median(ratios):.2f}, median SWAT/dense non-zeros "
        f"{np.median(sparsity):.2f}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=0, help="train a new autoencoder for this many steps")
    parser.add_argument("--save", default=None, help="where to save the trained autoencoder")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    args = parser.parse_args()
    model = None
    if args.train:
        model, losses, seconds = train(args.train, args.save)
        print(
            f"trained {args.train} steps in {seconds:.0f} s; final loss (mean of last 100) {losses[-100:].mean():.4f}"
        )
    result = run(model, tasks=args.tasks.split(",") if args.tasks else None)
    print(summarize(result))


if __name__ == "__main__":
    main()
