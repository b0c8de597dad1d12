"""What a SWAT-NN fit compiles, task after task (benchmarks/README.md (ak)).

Runs ``swat.search``, ``swat.refine``, ``swat.train_dense`` and ``swat.prune`` + ``swat.retrain`` on two tasks of the
suite with the shipped model and prints, per task, how many programs XLA compiled and for how long (JAX's own
``backend_compile_duration`` events), the programs over 0.2 s by name, and a SHA-1 of each result's arrays (to
compare two versions of the library bit for bit).

    python benchmarks/swat_compiles.py             # 60 search steps, one start (the compile counts do not depend on it)
    python benchmarks/swat_compiles.py --steps 1000 --starts 4
"""

from __future__ import annotations

import argparse
import hashlib

import equinox as eqx
import jax
import numpy as np

from jaxnls import swat


def digest(tree) -> str:
    sha = hashlib.sha1()
    for leaf in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array)):
        sha.update(np.asarray(leaf).tobytes())
    return sha.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--starts", type=int, default=1)
    parser.add_argument("--tasks", nargs="+", default=["himmelblau", "rosenbrock"])
    options = parser.parse_args()
    compiles: list[tuple[float, str]] = []

    def listen(event: str, duration: float, **labels) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append((duration, str(labels.get("fun_name"))))

    jax.monitoring.register_event_duration_secs_listener(listen)
    model = swat.load_pretrained()
    config = swat.SearchConfig(steps=options.steps, starts=options.starts)
    for name in options.tasks:
        task = swat.make_task(name, 0)
        x, y = np.float32(task.x_train), np.float32(task.y_train)
        before = len(compiles)
        found = swat.search(model, x, y, jax.random.PRNGKey(1), config)
        refined = swat.refine(model, found, x, y, jax.random.PRNGKey(2), config)
        dense = swat.train_dense(x, y, jax.random.PRNGKey(3), int(refined.network.depth), config)
        retrained = swat.retrain(swat.prune(dense, 20), x, y, jax.random.PRNGKey(4), config)
        jax.block_until_ready(retrained)
        these = compiles[before:]
        big = ", ".join(f"{label} {seconds:.2f} s" for seconds, label in these if seconds > 0.2)
        print(f"{name}: {len(these)} programs compiled, {sum(s for s, _ in these):.1f} s ({big or 'none over 0.2 s'})")
        print(f"  SHA-1 refine {digest(refined)}, dense {digest(dense)}, retrain {digest(retrained)}")


if __name__ == "__main__":
    main()
