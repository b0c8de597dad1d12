"""``jax.vmap`` of a function traced once unbatched: the same program, traced in less time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.api_util
from jax.extend.core import jaxpr_as_fun


def _leaf_axes(tree, axes) -> list:
    """``axes`` (a prefix of ``tree``, as vmap's ``in_axes``/``out_axes``), one entry per leaf of ``tree``."""
    flat: list = []
    jax.tree_util.tree_map(
        lambda axis, subtree: flat.extend([axis] * len(jax.tree_util.tree_leaves(subtree))),
        axes,
        tree,
        is_leaf=lambda a: a is None,
    )
    return flat


def vmap_traced_once(fn: Callable, in_axes: tuple, out_axes: Any = 0) -> Callable:
    """``jax.vmap(fn, in_axes, out_axes)``, with ``fn`` traced as one problem's program before it is batched.

    Under ``vmap`` every ``jax.numpy`` function ``fn`` calls is a jitted program of its own, traced and then
    batched apart (for each new signature, the first time in a process). Traced unbatched first, those programs
    are inlined into one flat program of primitives, which ``vmap`` then batches one by one: the same primitives
    in the same order (XLA compiles the same program), traced in less time (benchmarks/README.md (ax)).
    ``in_axes``: one entry per positional argument, each a prefix of it (an axis or None); ``out_axes``: a
    prefix of the output.
    """

    def batched(*inputs):
        flat_inputs, flat_axes = [], []
        for argument, axes in zip(inputs, in_axes, strict=True):
            flat_inputs += jax.tree_util.tree_leaves(argument)
            flat_axes += _leaf_axes(argument, axes)
        structures = [jax.tree_util.tree_structure(argument) for argument in inputs]

        def flat_fn(*leaves):
            arguments, start = [], 0
            for structure in structures:
                arguments.append(jax.tree_util.tree_unflatten(structure, leaves[start : start + structure.num_leaves]))
                start += structure.num_leaves
            return fn(*arguments)

        def one_problem(leaf, axis):
            aval: Any = jax.api_util.shaped_abstractify(leaf)  # (a ShapedArray)
            if axis is not None:
                axis %= len(aval.shape)  # (as vmap reads a negative axis)
            shape = aval.shape if axis is None else aval.shape[:axis] + aval.shape[axis + 1 :]
            return jax.ShapeDtypeStruct(shape, aval.dtype, weak_type=aval.weak_type)

        program, outputs = jax.make_jaxpr(flat_fn, return_shape=True)(*map(one_problem, flat_inputs, flat_axes))
        flat_out_axes = _leaf_axes(outputs, out_axes)  # (a list: the flat program returns one)
        results = jax.vmap(jaxpr_as_fun(program), in_axes=tuple(flat_axes), out_axes=flat_out_axes)(*flat_inputs)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(outputs), results)

    return batched
