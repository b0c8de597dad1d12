"""A residual function's problems as the user hands them over: parameters, batch axis and ``args_axes``
checked with errors that name the offending leaf (shared by :func:`jaxnls.solve` and
:func:`jaxnls.covariance`)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def as_float_array(path, leaf, name: str = "params0"):
    """``leaf`` as a floating JAX array, or a TypeError naming ``name`` and ``path``."""
    if isinstance(leaf, (bool, np.bool_)) or not (isinstance(leaf, (int, float)) or hasattr(leaf, "dtype")):
        raise TypeError(
            f"{name}{jax.tree_util.keystr(path)} is a {type(leaf).__name__}; every leaf of {name} "
            "must be a floating-point array"
        )
    leaf = jnp.asarray(leaf) if not isinstance(leaf, int) else leaf
    if isinstance(leaf, int) or not jnp.issubdtype(leaf.dtype, jnp.floating):
        dtype = "int" if isinstance(leaf, int) else leaf.dtype
        raise TypeError(
            f"{name}{jax.tree_util.keystr(path)} has dtype {dtype}; nonlinear least squares needs "
            "floating-point parameters (convert it, e.g. jnp.asarray(x, dtype=float))"
        )
    return leaf


def check_sizes(params0, batched: bool, name: str = "params0"):
    """Empty batches and empty parameter vectors get a clear error here instead of one from deep inside."""
    leaves = jax.tree_util.tree_leaves(params0)
    if batched and leaves[0].shape[0] == 0:
        raise ValueError(f"batched=True but the batch is empty ({name}'s leaves have leading size 0)")
    per_problem = sum(int(np.prod(leaf.shape[1:] if batched else leaf.shape)) for leaf in leaves)
    if per_problem == 0:
        raise ValueError(f"{name} has no parameters (its arrays have size 0): there is nothing to solve for")


def batch_size(params0, name: str = "params0") -> int:
    """The common leading size of ``params0``'s leaves (a ValueError naming ``name`` otherwise)."""
    sizes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params0)[0]:
        if leaf.ndim == 0:
            raise ValueError(
                f"batched=True but {name}{jax.tree_util.keystr(path)} is a scalar; every leaf "
                "needs a leading batch axis"
            )
        sizes[jax.tree_util.keystr(path)] = leaf.shape[0]
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{name}{k}: {v}" for k, v in sizes.items())
        raise ValueError(f"batched=True but the leaves of {name} disagree on the batch size ({listing})")
    return next(iter(sizes.values()))


def broadcast_args_axes(args_axes, args, batch_size: int, name: str = "params0"):
    """``args_axes`` broadcast to the structure of ``args``, each batched leaf checked against the batch."""
    try:
        axes = jax.tree.broadcast(args_axes, args, is_leaf=lambda a: a is None)
    except ValueError as err:
        raise ValueError(f"args_axes must be a prefix of the structure of args: {err}") from None
    paths_axes = jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda a: a is None)[0]
    arg_leaves = jax.tree_util.tree_leaves(args, is_leaf=lambda a: a is None)
    for (path, axis), leaf in zip(paths_axes, arg_leaves):
        where = f"args{jax.tree_util.keystr(path)}"
        if axis is None:
            continue
        if axis != 0:
            raise ValueError(f"args_axes for {where} is {axis!r}; use 0 (batched on the leading axis) or None")
        if callable(leaf) or isinstance(leaf, str):
            continue  # static: shared by every problem whatever args_axes says
        shape = np.shape(leaf)
        if not hasattr(leaf, "shape") or len(shape) == 0:
            raise ValueError(
                f"{where} is marked batched (axis 0) but is not an array with a batch axis; "
                "mark it None in args_axes to share it across the batch"
            )
        if shape[0] != batch_size:
            raise ValueError(
                f"{where} has leading size {shape[0]} but {name} has batch size {batch_size}; "
                "mark it None in args_axes if it is shared by every problem"
            )
    return axes


def one_problem(tree, batched: bool):
    """One problem's part of a batched ``tree`` as shapes: each array leaf a :class:`jax.ShapeDtypeStruct`
    without its leading axis (``tree`` itself when not ``batched``). Nothing is sliced: an eager slice
    compiles a program for every new shape, where reading the residual's size needs shapes only."""
    if not batched:
        return tree
    return jax.tree_util.tree_map(_without_leading_axis, tree)


def _one_problem_args(args, axes):
    """:func:`one_problem` of ``args``: the leaves batched in ``axes`` (0) as shapes without that axis, the
    shared ones (None) as they are."""
    return jax.tree_util.tree_map(
        lambda axis, leaf: leaf if axis is None else _without_leading_axis(leaf),
        axes,
        args,
        is_leaf=lambda a: a is None,
    )


def _without_leading_axis(leaf):
    if not hasattr(leaf, "shape"):  # a static leaf (a function, a string) marked batched: shared as it is
        return leaf
    weak = bool(getattr(leaf, "weak_type", False))
    return jax.ShapeDtypeStruct(np.shape(leaf)[1:], jax.dtypes.canonicalize_dtype(leaf.dtype), weak_type=weak)


def one_problem_call(params, args, batched: bool, axes) -> tuple:
    """``(params, args)`` of one problem, as shapes where batched, of a call whose ``params`` (and ``args``,
    along ``axes``, as :func:`broadcast_args_axes` gives them) carry a batch axis when ``batched``."""
    return (one_problem(params, True), _one_problem_args(args, axes)) if batched else (params, args)


def residual_size(residual_fn, params, args, batched: bool, axes) -> int:
    """m, one problem's residual count (:func:`check_residual` on :func:`one_problem_call`'s shapes)."""
    return check_residual(residual_fn, *one_problem_call(params, args, batched, axes))


def check_residual(residual_fn, single_params, single_args) -> int:
    """m, the size of ``residual_fn``'s output for one problem, after checking it is a non-empty floating pytree
    (``single_params`` and ``single_args`` may hold arrays or their shapes, :func:`one_problem`'s)."""
    out = eqx.filter_eval_shape(residual_fn, single_params, single_args)
    leaves = jax.tree_util.tree_flatten_with_path(out)[0]
    if not leaves:
        raise ValueError("residual_fn returned no arrays; it must return the residual vector (or a pytree of them)")
    for path, leaf in leaves:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"residual_fn output{jax.tree_util.keystr(path)} has dtype {leaf.dtype}; residuals "
                "must be real floating-point arrays"
            )
    num_residuals = sum(int(np.prod(leaf.shape)) for _, leaf in leaves)
    if num_residuals == 0:
        raise ValueError("residual_fn returned zero residuals")
    return num_residuals
