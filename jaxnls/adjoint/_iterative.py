r"""Adjoints that differentiate iterations: through the solve itself (:class:`Unroll`), or through a few
Gauss-Newton refinement steps taken from the solution (:class:`Truncated`)."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PyTree

from .._numerics import finite_derivatives
from ._implicit import AbstractAdjoint, AbstractAdjointProblem


class Unroll(AbstractAdjoint):
    r"""Differentiate the solver's iterations themselves (reverse and forward mode).

    The loop then runs exactly ``max_steps`` iterations as a ``lax.scan`` (finished problems are
    masked and stop changing), so set ``max_steps`` to the iterations you want to differentiate.
    With ``checkpoint=True`` (default) each iteration is rematerialised in the backward pass: memory
    is one loop state per iteration instead of every intermediate. Unlike :class:`Implicit`, the
    starting point ``params0`` gets a gradient, and the derivative is that of the iterates actually
    computed (it approaches the implicit one as the solve converges).

    Attributes:
        checkpoint: rematerialise each iteration in the backward pass (default True).
    """

    # a field here, a ClassVar default on the base (whose other subclasses have no such option)
    checkpoint: bool = True  # pyright: ignore[reportIncompatibleVariableOverride]

    differentiates_iterations: ClassVar[bool] = True

    def attach(
        self,
        problem: AbstractAdjointProblem,
        x: Float[Array, "batch n"],
        cost: Float[Array, " batch"],
        status: Int[Array, " batch"],
        args: PyTree,
        axes: PyTree,
    ) -> tuple[Float[Array, "batch n"], Float[Array, " batch"]]:
        return x, cost


class Truncated(AbstractAdjoint):
    r"""Differentiate ``num_steps`` Gauss-Newton steps taken from the returned solution.

    The solve runs undifferentiated; then :math:`x_{j+1} = x_j - (J^\top J)^{-1} J^\top r` is applied
    ``num_steps`` times from :math:`x_0 = x^*` with gradients flowing through every step, and the
    returned values stay those of the solve (the steps contribute derivatives only). One step gives
    the Gauss-Newton implicit derivative :math:`-(J^\top J)^{-1}\partial_θ g` exactly (at
    :math:`x^*`, :math:`J^\top r = 0`); more steps converge to the exact implicit derivative when the
    residual curvature is small next to :math:`J^\top J` (the fixed-point map contracts). Cost grows
    with ``num_steps``: each is one residual+Jacobian evaluation and one solve, forward and backward.

    Attributes:
        num_steps: the Gauss-Newton steps differentiated, a positive int, default 10.
    """

    num_steps: int = 10

    def __check_init__(self):
        if not isinstance(self.num_steps, int) or isinstance(self.num_steps, bool) or self.num_steps < 1:
            raise ValueError(f"Truncated(num_steps=...) must be a positive int, got {self.num_steps!r}")

    def attach(
        self,
        problem: AbstractAdjointProblem,
        x: Float[Array, "batch n"],
        cost: Float[Array, " batch"],
        status: Int[Array, " batch"],
        args: PyTree,
        axes: PyTree,
    ) -> tuple[Float[Array, "batch n"], Float[Array, " batch"]]:
        step, cost_at = finite_derivatives(problem.gauss_newton_step), finite_derivatives(problem.cost)

        def refine(x, args):
            usable = jnp.all(jnp.isfinite(x))

            # Steps are taken while they stay where the residual is finite: from a point whose step
            # overflows (x* + δ with exp(·) = inf) the refinement stops, so its derivative is that of the
            # steps it could take (zero if none, e.g. at a start whose residual is not finite)
            def one_step(_, carry):
                x, going = carry
                new = step(x, args)
                going = (
                    going & jnp.all(jnp.isfinite(new)) & jnp.isfinite(jax.lax.stop_gradient(problem.cost(new, args)))
                )
                return jnp.where(going, new, x), going

            x, _ = jax.lax.fori_loop(0, self.num_steps, one_step, (jnp.where(usable, x, 0.0), usable))
            return jnp.where(usable, x, 0.0), jnp.where(usable, cost_at(x, args), 0.0)

        refined_x, refined_cost = jax.vmap(refine, in_axes=(0, axes))(jax.lax.stop_gradient(x), args)
        # the solve's values (the bracket is exactly zero; a non-finite refinement, which has no derivative,
        # must not turn it into inf - inf = NaN), the refinement's derivatives
        return x + _difference(refined_x), cost + _difference(refined_cost)


def _difference(refined):
    """``refined - stop_gradient(refined)``: zero, with the derivative of ``refined`` (none where it is not finite)."""
    return jnp.where(jnp.isfinite(refined), refined - jax.lax.stop_gradient(refined), 0.0)
