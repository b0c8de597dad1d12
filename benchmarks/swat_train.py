"""(x) SWAT-NN at a larger scale: train a bigger autoencoder for as long as the machine allows, resumably, then
measure it as (g) measures the shipped one — held-out functional reconstruction and the ten-task suite over
several seeds.

    # train in sessions of at most 60 minutes; each call resumes from the checkpoint where the last one stopped
    python benchmarks/swat_train.py --steps 40000 --minutes 60 --checkpoint runs/swat_large.ckpt
    # once the checkpoint holds all 40,000 steps: save the model, then the reconstruction and the task table
    python benchmarks/swat_train.py --steps 40000 --checkpoint runs/swat_large.ckpt --save runs/swat_large.eqx \\
        --suite --seeds 3
    # the same table for the shipped model, for the before/after comparison
    python benchmarks/swat_train.py --suite --seeds 3

Training is `jaxnls.swat.train_autoencoder` with ``checkpoint=``: every ``--checkpoint-every`` steps and when the
time budget ends, the model, the optimiser's state and the loss curve so far are written atomically (a crash
leaves the previous checkpoint), and a later call with the same settings continues bit for bit (a checkpoint
written with other settings is refused). Progress: a bar on a terminal, a line every ``--log-every`` steps
otherwise. The default architecture is larger than the shipped one (``swat.PRETRAINED_OPTIONS``: latent 32,
width 32, 1 block, decoders 128 × 2): latent 48, width 64, 2 blocks, decoders 256 × 3.

The suite: for every task and seed, `swat.search` + `swat.refine` against a dense network of the found depth
(benchmarks/swat.py), reported per task as the hard network's test MSE over the dense network's and its
non-zero weights over the dense network's (median over seeds), and the medians over the ten tasks — the issue's
target is MSE ≤ 1.5× dense at ≤ 0.6× its weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import equinox as eqx
import jax
import numpy as np
import swat as suite
from _common import format_table

from jaxnls import swat

LARGER = dict(latent_size=48, width=64, heads=4, num_blocks=2, decoder_width=256, decoder_depth=3)


def train(args) -> swat.SwatAutoencoder:
    options = dict(
        latent_size=args.latent,
        width=args.width,
        heads=args.heads,
        num_blocks=args.blocks,
        decoder_width=args.decoder_width,
        decoder_depth=args.decoder_depth,
    )
    if args.checkpoint:
        os.makedirs(os.path.dirname(os.path.abspath(args.checkpoint)), exist_ok=True)
    # --continue-from: train a saved model further (its own architecture) instead of a new one
    start_from = dict(model=swat.load_autoencoder(args.continue_from)) if args.continue_from else options
    start = time.perf_counter()
    model, losses = swat.train_autoencoder(
        jax.random.PRNGKey(args.seed),
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.learning_rate,
        hard_weight=args.hard_weight,
        size_weight=args.size_weight,
        size_measure=args.size_measure,
        checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        max_seconds=None if args.minutes is None else 60 * args.minutes,
        log_every=args.log_every,
        **start_from,
    )
    done = int(losses.shape[0])
    tail = np.asarray(losses[-min(done, 100) :])
    print(
        f"trained to step {done:,} of {args.steps:,} ({time.perf_counter() - start:.0f} s in this call); "
        f"functional loss, mean of the last {tail.shape[0]} steps: {tail.mean():.4f}; "
        f"{sum(leaf.size for leaf in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))):,} parameters"
    )
    if done < args.steps:
        print(f"not finished: run the same command again to continue from {args.checkpoint}")
    elif args.save:
        swat.save_autoencoder(args.save, model)
        print(f"saved {args.save}")
    return model


def suite_table(
    model, seeds: int, tasks, retrain: bool = False, penalties: dict | None = None, prune_to: float | None = None
) -> str:
    figures = swat.evaluate_reconstruction(model, jax.random.PRNGKey(2024), num_networks=1024)
    per_task: dict[str, list[tuple[float, float]]] = {}
    equal: dict[str, list[tuple[float, float]]] = {}
    for seed in range(seeds):
        # every seed compiles its searches and trainings afresh: drop the last seed's executables, or a long
        # run (5 seeds with --retrain) exhausts the process's memory mappings ("LLVM compilation error: Cannot
        # allocate memory")
        jax.clear_caches()
        config = dataclasses.replace(suite.CONFIG, **(penalties or {}))
        result = suite.run(model, config=config, tasks=tasks, seed=seed, retrain=retrain, prune_to=prune_to)
        for name, r in result["tasks"].items():
            ratio = r["refined"]["test_mse"] / r["dense"]["test_mse"]
            weights = r["refined"]["nonzeros"] / r["dense"]["nonzeros"]
            per_task.setdefault(name, []).append((ratio, weights))
            if retrain:
                found = r["pruned" if prune_to is not None else "retrained"]
                equal.setdefault(name, []).append(
                    (
                        found["test_mse"] / r["dense_retrained"]["test_mse"],
                        found["test_mse"] / r["dense_long"]["test_mse"],
                        found["nonzeros"] / r["dense"]["nonzeros"],
                    )
                )
    rows = []
    for name, pairs in per_task.items():
        ratios, weights = np.array(pairs).T
        rows.append(
            [
                name,
                f"{np.median(ratios):.2f}",
                f"{ratios.min():.2f}-{ratios.max():.2f}",
                f"{np.median(weights):.2f}",
                f"{weights.min():.2f}-{weights.max():.2f}",
            ]
        )
    medians = np.median([[np.median(np.array(p)[:, 0]), np.median(np.array(p)[:, 1])] for p in per_task.values()], 0)
    equal_table = ""
    if retrain:
        equal_rows = []
        for name, pairs in equal.items():
            both, long, _ = np.array(pairs).T
            equal_rows.append(
                [
                    name,
                    f"{np.median(both):.2f}",
                    f"{both.min():.2f}-{both.max():.2f}",
                    f"{np.median(long):.2f}",
                    f"{long.min():.2f}-{long.max():.2f}",
                ]
            )
        equal_medians = np.median([np.median(np.array(p), axis=0) for p in equal.values()], axis=0)
        equal_table = (
            "\nat an equal training budget: the found network's test MSE, "
            + (f"pruned to {prune_to}x the dense weights and " if prune_to is not None else "")
            + "retrained (swat.retrain), over\n"
            + format_table(
                ["task", "the dense one retrained", "range", "a dense one trained 3x as long", "range"], equal_rows
            )
            + f"\nmedian over the tasks: {equal_medians[0]:.2f}x and {equal_medians[1]:.2f}x, at "
            f"{equal_medians[2]:.2f}x the dense network's weights"
        )
    return (
        f"held-out functional reconstruction MSE {figures['reconstruction']:.4f} (trivial baseline "
        f"{figures['baseline']:.4f}); {seeds} seed(s) per task\n"
        + format_table(
            ["task", "MSE / dense (median)", "range", "weights / dense (median)", "range"],
            rows,
        )
        + f"\nmedian over the tasks: test MSE {medians[0]:.2f}× dense at {medians[1]:.2f}× its weights "
        "(target: <= 1.5× at <= 0.6×)" + equal_table
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=0, help="training steps in all (0: no training)")
    parser.add_argument("--checkpoint", default=None, help="the file to resume from and save to")
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=None, help="stop this call after so many minutes")
    parser.add_argument("--save", default=None, help="where to save the model once all steps are done")
    parser.add_argument("--model", default=None, help="evaluate this saved model (default: the trained or shipped one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--hard-weight", type=float, default=0.0, help="weight of the hard decodings' loss (straight-through)"
    )
    parser.add_argument("--continue-from", default=None, help="a saved model to train further")
    parser.add_argument(
        "--size-weight",
        type=float,
        default=0.0,
        help="weight of the hard decodings' size (with --hard-weight)",
    )
    parser.add_argument(
        "--size-measure",
        choices=("neurons", "connections"),
        default="neurons",
        help="what --size-weight counts: the share of neurons or of connection weights kept",
    )
    parser.add_argument(
        "--sparsity-weight", type=float, default=None, help="the search's sparsity weight (default: SearchConfig's)"
    )
    parser.add_argument(
        "--compactness-weight",
        type=float,
        default=None,
        help="the search's compactness weight (default: SearchConfig's)",
    )
    parser.add_argument("--log-every", type=int, default=0)
    parser.add_argument("--latent", type=int, default=LARGER["latent_size"])
    parser.add_argument("--width", type=int, default=LARGER["width"])
    parser.add_argument("--heads", type=int, default=LARGER["heads"])
    parser.add_argument("--blocks", type=int, default=LARGER["num_blocks"])
    parser.add_argument("--decoder-width", type=int, default=LARGER["decoder_width"])
    parser.add_argument("--decoder-depth", type=int, default=LARGER["decoder_depth"])
    parser.add_argument("--suite", action="store_true", help="run the ten-task suite afterwards")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--prune-to",
        type=float,
        default=None,
        help="with --retrain: prune the found network to this fraction of "
        "the dense network's weights before retraining it",
    )
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all ten)")
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="with --suite: also compare at an equal training budget (both networks retrained; a dense one "
        "trained three times as long)",
    )
    args = parser.parse_args()
    model = None
    if args.steps:
        model = train(args)
        if args.minutes is not None and not args.save:
            return
    if args.model:
        model = swat.load_autoencoder(args.model)
    if args.suite:
        tasks = args.tasks.split(",") if args.tasks else None
        penalties = {
            name: value
            for name, value in (
                ("sparsity_weight", args.sparsity_weight),
                ("compactness_weight", args.compactness_weight),
            )
            if value is not None
        }
        print(suite_table(model or swat.load_pretrained(), args.seeds, tasks, args.retrain, penalties, args.prune_to))


if __name__ == "__main__":
    main()
