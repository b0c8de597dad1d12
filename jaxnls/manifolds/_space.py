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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Bool, Float, PyTree

from .._numerics import split_by_sizes

if TYPE_CHECKING:
    from jaxlie import MatrixLieGroup
    from typing_extensions import TypeIs

    # a variable: a (stacked) jaxlie group or a Euclidean array
    _Variable = TypeVar("_Variable", MatrixLieGroup, Array)


def is_group(leaf: object) -> TypeIs[MatrixLieGroup]:
    """True for a jaxlie Lie-group instance (False without jaxlie imported: then none can exist).

    Args:
        leaf: any object, typically a pytree leaf (with ``is_leaf=is_group`` a group counts as one).

    Returns:
        Whether ``leaf`` is a ``jaxlie.MatrixLieGroup``, stacked or not.
    """
    jaxlie = sys.modules.get("jaxlie")
    return jaxlie is not None and isinstance(leaf, jaxlie.MatrixLieGroup)


def has_groups(tree: PyTree) -> bool:
    """True when some leaf of ``tree`` is a jaxlie group.

    Args:
        tree: a pytree, e.g. a solve's ``params0``.

    Returns:
        Whether any leaf (groups taken as leaves) is a jaxlie group.
    """
    return any(is_group(leaf) for leaf in jax.tree_util.tree_leaves(tree, is_leaf=is_group))


def parameter_array(leaf: MatrixLieGroup | ArrayLike) -> Array | ArrayLike:
    """The array a leaf stores: a group's parameters (e.g. ``SE3``'s ``wxyz_xyz``), an array as it is.

    A group's array is read from its pytree: jaxlie's ``parameters()`` is jitted, and outside ``jit`` each
    call on a new shape compiles a program just to return the array.

    Args:
        leaf: a jaxlie group, possibly stacked, or an array.

    Returns:
        The group's parameter array (shape ``(*batch, parameters_dim)``), or ``leaf`` itself.
    """
    return jax.tree_util.tree_leaves(leaf)[0] if is_group(leaf) else leaf


def _group_batch_shape(group: MatrixLieGroup) -> tuple[int, ...]:
    return tuple(jnp.shape(parameter_array(group))[:-1])


def tangent_size(leaf: MatrixLieGroup | ArrayLike) -> int:
    """Number of tangent coordinates of a leaf (a stacked group counts every element).

    Args:
        leaf: a jaxlie group, possibly stacked, or an array.

    Returns:
        N·d for a group stacked to N elements of tangent dimension d; the array's size otherwise.
    """
    if is_group(leaf):
        return int(math.prod(_group_batch_shape(leaf))) * type(leaf).tangent_dim
    return int(math.prod(jnp.shape(leaf)))


def retract(group: _Variable, delta: Float[ArrayLike, "*shape"]) -> _Variable:
    r"""Right retraction :math:`X \cdot \operatorname{Exp}(δ)`; ``delta`` has shape ``batch + (d,)`` (or is
    flat with as many entries). For a Euclidean array it is ``x + δ``.

    Args:
        group: :math:`X`, a jaxlie group with batch shape ``batch`` (stacked elements are retracted
            independently), or an array.
        delta: :math:`δ`, :func:`tangent_size` entries: ``batch + (d,)`` or flat (for an array, its shape
            or flat).

    Returns:
        :math:`X \oplus δ`, of the type and shape of ``group`` (``delta`` cast to its dtype).
    """
    if not is_group(group):
        return group + jnp.reshape(delta, jnp.shape(group)).astype(group.dtype)
    kind = type(group)
    batch = _group_batch_shape(group)
    delta = jnp.reshape(delta, batch + (kind.tangent_dim,)).astype(group.parameters().dtype)
    return _elementwise(lambda g, d: g @ kind.exp(d), len(batch))(group, delta)


def local(group: _Variable, other: _Variable) -> Float[Array, "... d"]:
    r"""Inverse of :func:`retract`: :math:`\operatorname{Log}(X^{-1} Y)` (``y - x`` for arrays).

    Args:
        group: :math:`X`, a jaxlie group (possibly stacked) or an array.
        other: :math:`Y`, of the same type and batch shape.

    Returns:
        :math:`δ` with :math:`X \oplus δ = Y`: ``batch + (d,)`` for groups, the arrays' shape otherwise.
    """
    if not is_group(group):
        return other - group
    return _elementwise(lambda g, h: (g.inverse() @ h).log(), len(_group_batch_shape(group)))(group, other)


def _elementwise(fn: Callable[..., Any], num_batch_axes: int) -> Callable[..., Any]:
    """``fn`` on single group elements, vmapped over stacked ones (jaxlie's own broadcasting relies on
    NumPy rank promotion, which strict ``jax_numpy_rank_promotion`` settings forbid)."""
    for _ in range(num_batch_axes):
        fn = jax.vmap(fn)
    return fn


def tangent_magnitude(leaf: MatrixLieGroup | ArrayLike) -> Float[Array, " d"]:
    """Per tangent coordinate, the size the parameter test measures a step against (flat).

    Args:
        leaf: a jaxlie group, possibly stacked, or an array.

    Returns:
        A flat vector of :func:`tangent_size` entries: the array itself (ravelled); for SE2 / SE3 each
        element's translation and 1 for each rotation coordinate; 1 everywhere for SO2 / SO3.
    """
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

    def retract(self, x: Float[Array, "*batch n"], step: Float[Array, "*batch n"]) -> tuple[Array, Array]:
        trial = x + step
        return trial, trial - x

    retract_step = retract

    def magnitude(self, x: Float[Array, "*batch n"]) -> Float[Array, "*batch n"]:
        return x

    magnitude_one = magnitude


EUCLIDEAN = _Euclidean()
"""The space of Euclidean problems: ``retract(x, δ)`` gives ``(x + δ, (x + δ) - x)`` and ``magnitude(x)``
is ``x`` itself, op for op the loop's plain vector arithmetic (:class:`ProductSpace` is the one for
problems with Lie-group leaves)."""


class ProductSpace:
    r"""A pytree of Euclidean arrays and (stacked) jaxlie groups as one flat ambient vector ``x`` with
    a flat tangent vector ``δ``: leaf after leaf in pytree order, each group's tangent rows
    ``(..., d)`` flattened row-major. Methods named ``*_one`` act on one problem; ``retract`` and
    ``magnitude`` on a batch (leading axis), as the loop calls them.

    Args:
        template: a pytree of one problem's parameters (arrays and jaxlie groups) fixing the structure,
            shapes and dtypes.

    Attributes:
        sizes: the tangent size of each leaf, in pytree order.
        tangent_size: n, the length of ``δ``.
    """

    def __init__(self, template: PyTree):
        self.template = template
        _, self.unravel = ravel_pytree(template)
        leaves, self.treedef = jax.tree_util.tree_flatten(template, is_leaf=is_group)
        self.sizes = [tangent_size(leaf) for leaf in leaves]
        self.tangent_size = int(sum(self.sizes))

    def retract_params(self, params: PyTree, delta: Float[Array, " n"]) -> PyTree:
        """``params ⊕ δ`` as a pytree like the template, ``δ`` split leaf by leaf (:func:`retract`)."""
        leaves = jax.tree_util.tree_leaves(params, is_leaf=is_group)
        moved = [retract(leaf, piece) for leaf, piece in zip(leaves, split_by_sizes(delta, self.sizes))]
        return jax.tree_util.tree_unflatten(self.treedef, moved)

    def retract_one(self, x: Float[Array, " N"], delta: Float[Array, " n"]) -> Float[Array, " N"]:
        """``x ⊕ δ`` for one problem, flat ambient vector in and out."""
        return ravel_pytree(self.retract_params(self.unravel(x), delta))[0].astype(x.dtype)

    def magnitude_one(self, x: Float[Array, " N"]) -> Float[Array, " n"]:
        """The parameter sizes of one problem (:func:`tangent_magnitude` leaf by leaf), tangent-shaped."""
        leaves = jax.tree_util.tree_leaves(self.unravel(x), is_leaf=is_group)
        return jnp.concatenate([tangent_magnitude(leaf).astype(x.dtype) for leaf in leaves])

    def retract(
        self, x: Float[Array, "batch N"], step: Float[Array, "batch n"]
    ) -> tuple[Float[Array, "batch N"], Float[Array, "batch n"]]:
        """``(x ⊕ δ, δ)`` for a batch: the trial points and the steps taken."""
        return jax.vmap(self.retract_one)(x, step), step

    def retract_step(
        self, x: Float[Array, " N"], step: Float[Array, " n"]
    ) -> tuple[Float[Array, " N"], Float[Array, " n"]]:
        """``(x ⊕ δ, δ)`` for one problem: the trial point and the step taken."""
        return self.retract_one(x, step), step

    def finite_or_identity(self, x: Float[Array, "batch N"]) -> tuple[Bool[Array, " batch"], Float[Array, "batch N"]]:
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

    def magnitude(self, x: Float[Array, "batch N"]) -> Float[Array, "batch n"]:
        """:meth:`magnitude_one` for a batch."""
        return jax.vmap(self.magnitude_one)(x)
