r"""Hypergradients of a solved inner problem by the implicit function theorem, with forward-over-reverse products."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.core
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import PyTree


def implicit_hypergradient(
    inner_loss: Callable[[PyTree, PyTree, PyTree], jax.Array],
    outer_loss: Callable[[PyTree, PyTree], jax.Array],
    theta_star: PyTree,
    eta: PyTree,
    batch: PyTree = None,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    max_steps: int | None = None,
) -> PyTree:
    r"""``d/dη outer_loss(θ*(η), η)`` where θ*(η) minimises ``inner_loss(·, η, batch)``.

    At a minimum :math:`∇_θ L(θ^*, η) = 0`, so :math:`dθ^*/dη = -H^{-1} ∇^2_{θη}L` with
    :math:`H = ∇^2_{θθ}L`, and

    .. math::  \frac{dF}{dη} = ∇_η F - ∇^2_{ηθ}L\, w,\qquad H w = ∇_θ F .

    Every second-derivative product is forward-over-reverse: conjugate gradients (lineax) solve for w
    with :math:`Hv` = ``jax.jvp`` of ``∇_θ L`` along v, and one more jvp of :math:`∇_{(θ,η)}L` along w
    gives :math:`∇^2_{ηθ}L\,w`; nothing is differentiated in reverse twice. θ* can come from any solver
    (an optax loop, :func:`jaxnls.solve` with ``inner_loss = ½‖r(θ, η)‖²``, ...): only its value is used,
    so the solver's iterations are never differentiated.

    Args:
        inner_loss: ``inner_loss(θ, η, batch) -> scalar``, minimised over θ at ``theta_star``.
        outer_loss: ``outer_loss(θ, η) -> scalar``.
        theta_star: the inner minimiser (a pytree of floating arrays).
        eta: the meta-parameters (a pytree of floating arrays).
        batch: data passed to ``inner_loss`` unchanged.
        rtol: relative tolerance of the conjugate gradients on :math:`Hw = ∇_θ F` (lineax's ``CG``: per
            component, ``atol + rtol·|b_i|``), default 1e-10.
        atol: their absolute tolerance, default 1e-12.
        max_steps: their iteration limit; None (default): 10·dim θ.

    Returns:
        The hypergradient, a pytree like ``eta``.

    Raises:
        ValueError: ``theta_star`` or ``eta`` has non-floating leaves.
        RuntimeError: conjugate gradients fail (H is not positive definite at ``theta_star``: not a
            strict minimum, or the inner solve did not converge), when called outside ``jit``; inside
            ``jit`` the hypergradient is NaN instead.
    """
    for name, tree in (("theta_star", theta_star), ("eta", eta)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise ValueError(
                    f"{name}{jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}: "
                    "hypergradients need floating leaves"
                )
    flat_theta, unravel = ravel_pytree(theta_star)

    def grad_theta(flat):
        return ravel_pytree(jax.grad(inner_loss)(unravel(flat), eta, batch))[0]

    def hessian_times(v):
        return jax.jvp(grad_theta, (flat_theta,), (v,))[1]

    theta_bar, eta_bar = jax.grad(outer_loss, argnums=(0, 1))(theta_star, eta)
    operator = lx.FunctionLinearOperator(
        hessian_times, jax.eval_shape(lambda: flat_theta), tags=(lx.symmetric_tag, lx.positive_semidefinite_tag)
    )
    steps = 10 * flat_theta.size if max_steps is None else max_steps
    solution = lx.linear_solve(
        operator, ravel_pytree(theta_bar)[0], lx.CG(rtol=rtol, atol=atol, max_steps=steps), throw=False
    )
    w = jnp.where(solution.result == lx.RESULTS.successful, solution.value, jnp.nan)
    if not isinstance(w, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(w))):
        raise RuntimeError(
            "implicit_hypergradient: conjugate gradients did not solve H w = ∇_θF (is theta_star a "
            f"strict minimum of inner_loss? lineax: {solution.result})"
        )

    def grad_eta(flat):
        return jax.grad(inner_loss, argnums=1)(unravel(flat), eta, batch)

    mixed = jax.jvp(grad_eta, (flat_theta,), (w,))[1]
    return jax.tree_util.tree_map(lambda a, b: a - b, eta_bar, mixed)
