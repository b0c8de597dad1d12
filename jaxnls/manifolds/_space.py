r"""The flat-vector view the solve loop works on, with its retraction.

The loop carries a problem's parameters as one flat vector ``x`` (the ravelled pytree: for a group its
ambient parameters, e.g. SE3's 7 numbers) and takes steps ``δ`` in the tangent space (6 numbers for
SE3). A *space* supplies the two operations the loop needs beyond vector arithmetic:

- ``retract(x, δ) -> (trial, δ_taken)``: the trial point :math:`x \oplus δ` and the step as the loop should
  account for it. For Euclidean problems this is exactly ``trial = x + δ``, ``δ_taken = trial - x``
  (what survives rounding), so the Euclidean loop is unchanged bit for bit;
- ``magnitude(x)``: a tangent-shaped vector of parameter sizes for the scale-aware tests
  (``|δ_i| <= rtol·|x_i| + atol``, the first trust radius ``‖D x‖``): ``x`` itself for Euclidean
  problems; for a group its translation and 1 for each rotation coordinate (a unit angle).
"""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._numerics import split_by_sizes


def is_group(leaf) -> bool:
    """True for a jaxlie Lie-group instance (False without jaxlie imported: then none can exist)."""
    jaxlie = sys.modules.get("jaxlie")
    return jaxlie is not None and isinstance(leaf, jaxlie.MatrixLieGroup)


def has_groups(tree) -> bool:
    """True when some leaf of ``tree`` is a jaxlie group."""
    return any(is_group(leaf) for leaf in jax.tree_util.tree_leaves(tree, is_leaf=is_group))


def _group_batch_shape(group) -> tuple[int, ...]:
    return tuple(group.parameters().shape[:-1])


def tangent_size(leaf) -> int:
    """Number of tangent coordinates of a leaf (a stacked group counts every element)."""
    if is_group(leaf):
        return int(math.prod(_group_batch_shape(leaf))) * type(leaf).tangent_dim
    return int(math.prod(jnp.shape(leaf)))


def retract(group, delta):
    r"""Right retraction :math:`X \cdot \operatorname{Exp}(δ)`; ``delta`` has shape ``batch + (d,)`` (or is
    flat with as many entries). For a Euclidean array it is ``x + δ``."""
    if not is_group(group):
        return group + jnp.reshape(delta, jnp.shape(group)).astype(group.dtype)
    kind = type(group)
    batch = _group_batch_shape(group)
    delta = jnp.reshape(delta, batch + (kind.tangent_dim,)).astype(group.parameters().dtype)
    return _elementwise(lambda g, d: g @ kind.exp(d), len(batch))(group, delta)


def local(group, other):
    r"""Inverse of :func:`retract`: :math:`\operatorname{Log}(X^{-1} Y)` (``y - x`` for arrays)."""
    if not is_group(group):
        return other - group
    return _elementwise(lambda g, h: (g.inverse() @ h).log(), len(_group_batch_shape(group)))(group, other)


def _elementwise(fn, num_batch_axes: int):
    """``fn`` on single group elements, vmapped over stacked ones (jaxlie's own broadcasting relies on
    NumPy rank promotion, which strict ``jax_numpy_rank_promotion`` settings forbid)."""
    for _ in range(num_batch_axes):
        fn = jax.vmap(fn)
    return fn


def tangent_magnitude(leaf):
    """Per tangent coordinate, the size the parameter test measures a step against (flat)."""
    if not is_group(leaf):
        return jnp.ravel(leaf)
    kind = type(leaf)
    params = leaf.parameters()
    batch = _group_batch_shape(leaf)
    if hasattr(leaf, "translation"):
        translation = params[..., -leaf.space_dim :]  # SE2 / SE3 store the translation last
        rotation = jnp.ones(batch + (kind.tangent_dim - translation.shape[-1],), params.dtype)
        return jnp.ravel(jnp.concatenate([translation, rotation], axis=-1))
    return jnp.ones((math.prod(batch) * kind.tangent_dim,), params.dtype)


class _Euclidean:
    """``x ⊕ δ = x + δ``; the loop's original arithmetic, op for op."""

    def retract(self, x, step):
        trial = x + step
        return trial, trial - x

    retract_step = retract

    def magnitude(self, x):
        return x

    magnitude_one = magnitude


EUCLIDEAN = _Euclidean()


class ProductSpace:
    r"""A pytree of Euclidean arrays and (stacked) jaxlie groups as one flat ambient vector ``x`` with
    a flat tangent vector ``δ``: leaf after leaf in pytree order, each group's tangent rows
    ``(..., d)`` flattened row-major. Methods named ``*_one`` act on one problem; ``retract`` and
    ``magnitude`` on a batch (leading axis), as the loop calls them."""

    def __init__(self, template):
        self.template = template
        _, self.unravel = ravel_pytree(template)
        leaves, self.treedef = jax.tree_util.tree_flatten(template, is_leaf=is_group)
        self.sizes = [tangent_size(leaf) for leaf in leaves]
        self.tangent_size = int(sum(self.sizes))

    def retract_params(self, params, delta):
        leaves = jax.tree_util.tree_leaves(params, is_leaf=is_group)
        moved = [retract(leaf, piece) for leaf, piece in zip(leaves, split_by_sizes(delta, self.sizes))]
        return jax.tree_util.tree_unflatten(self.treedef, moved)

    def retract_one(self, x, delta):
        return ravel_pytree(self.retract_params(self.unravel(x), delta))[0].astype(x.dtype)

    def magnitude_one(self, x):
        leaves = jax.tree_util.tree_leaves(self.unravel(x), is_leaf=is_group)
        return jnp.concatenate([tangent_magnitude(leaf).astype(x.dtype) for leaf in leaves])

    def retract(self, x, step):
        return jax.vmap(self.retract_one)(x, step), step

    def retract_step(self, x, step):
        """``(x ⊕ δ, δ)`` for one problem: the trial point and the step taken."""
        return self.retract_one(x, step), step

    def finite_or_identity(self, x):
        """``(finite, safe)`` for a batch: whether each problem's ``x`` is finite, and ``x`` with the
        non-finite problems' rows replaced by the identity (groups) / zeros (arrays). The adjoints
        linearise at ``safe``: a NaN start's partial derivatives would otherwise be NaN, and a zero
        cotangent times a NaN partial poisons the whole batch's gradient."""
        identity = ravel_pytree(
            jax.tree_util.tree_map(
                lambda leaf: (
                    type(leaf).identity(batch_axes=leaf.get_batch_axes()) if is_group(leaf) else jnp.zeros_like(leaf)
                ),
                self.template,
                is_leaf=is_group,
            )
        )[0].astype(x.dtype)
        finite = jnp.all(jnp.isfinite(x), axis=-1)
        return finite, jnp.where(finite[:, None], x, identity[None])

    def magnitude(self, x):
        return jax.vmap(self.magnitude_one)(x)
