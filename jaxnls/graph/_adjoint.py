r"""The adjoints' view of a factor graph: its cost, Hessian solves and Gauss-Newton steps, block-sparse.

The adjoints of :func:`jaxnls.solve` (:mod:`jaxnls.adjoint`) work on one problem through
:class:`~jaxnls.adjoint.AbstractAdjointProblem`. For a graph the unknowns are the tangent coordinates
:math:`δ` of the chart :math:`δ \mapsto X \oplus δ` (per variable :math:`X_i\operatorname{Exp}(δ_i)`) around
the anchor :math:`X` (the solution), and the cost is :math:`c(δ, θ) = \tfrac12\sum_e \|w_e\|^2` with
:math:`w_e` term ``e``'s whitened residual (:math:`\|w_e\|^2 = ρ(\|L_e r_e\|^2)`). Its Hessian is the sum
of the terms' ``D×D`` blocks over the variables they connect, so the Hessian solves of the implicit
adjoint use the graph's own linear solver (:class:`SparseDirect`, :class:`PCG`, :class:`SchurPCG`) on those
blocks: no dense ``n×n`` matrix here either. Fixed variables have zero tangent columns.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, DTypeLike, Float, PyTree

from ..adjoint import AbstractAdjointProblem
from ..manifolds import ProductSpace
from ._graph import GraphStructure, gather_variables, information_axis, term_residual, with_arrays
from ._linear import AbstractGraphLinearSolver, NormalOperator


class GraphProblem(AbstractAdjointProblem):
    """``args = (anchor, cost_args)``: the flat ambient values of the variables and, per cost group,
    ``(data, sqrt_information, loss, arrays)``, ``arrays`` the arrays taken out of its residual function
    (:func:`~jaxnls.graph._graph.split_residual_arrays`; None for an ordinary function)."""

    structure: GraphStructure = eqx.field(static=True)
    space: ProductSpace = eqx.field(static=True)
    residual_fns: tuple[Callable[..., Float[ArrayLike, " k"]], ...] = eqx.field(static=True)
    linear_solver: AbstractGraphLinearSolver = eqx.field(static=True)
    dtype: DTypeLike = eqx.field(static=True)

    def _groups(self, delta, args):
        """Per cost group: ``(u, inputs, axes, loss)``: ``u(δ_e, m_e, variables_e, data_e, L_e)``, term ``e``'s
        residual :math:`L_e r_e` at its local tangent coordinates ``δ_e`` (D,) masked by ``m_e`` (0 for a
        fixed variable's coordinates, inside the function so that derivatives along them vanish), the vmap
        inputs over the terms, and the group's robust loss (or None)."""
        anchor, cost_args = args
        values = self.space.unravel(anchor)
        out = []
        for residual_fn, group, (data, sqrt_information, loss, arrays) in zip(
            self.residual_fns, self.structure.groups, cost_args
        ):
            residual = term_residual(with_arrays(residual_fn, arrays), group, self.dtype)
            local = delta[group["columns"]]
            mask = jnp.ones_like(local) if group["mask"] is None else jnp.asarray(group["mask"], self.dtype)

            def term(local, mask, variables, data, sqrt_information, residual=residual):
                return residual(variables, local * mask, data, sqrt_information)

            inputs = (local, mask, gather_variables(values, group), data, sqrt_information)
            out.append((term, inputs, (0, 0, 0, 0, information_axis(sqrt_information)), loss))
        return out

    @staticmethod
    def _term_cost(term, loss):
        """½ρ(‖u‖²) of one term (½‖u‖² without a loss)."""

        def cost(*inputs):
            s = jnp.sum(term(*inputs) ** 2)
            return 0.5 * (s if loss is None else loss.rho(s)[0])

        return cost

    # (the adjoints' x is the chart's tangent coordinates δ here)
    def cost(self, x: Float[Array, " n"], args: PyTree) -> Float[Array, ""]:
        return sum(
            (
                jnp.sum(jax.vmap(self._term_cost(term, loss), in_axes=axes)(*inputs))
                for term, inputs, axes, loss in self._groups(x, args)
            ),
            start=jnp.zeros((), self.dtype),
        )

    def whitened_jacobians(self, delta, args):
        r"""Whitened residuals ``(E, k)`` (:math:`\|w_e\|^2 = ρ(\|u_e\|^2)`) and their Jacobians ``(E, k, D)``
        per group: the Gauss-Newton model of the cost."""
        pieces, jacobians = [], []
        for term, inputs, axes, loss in self._groups(delta, args):

            def whitened(*inputs, term=term, loss=loss):
                u = term(*inputs)
                w = u if loss is None else loss.whiten(u)
                return w, w

            jac, w = jax.vmap(jax.jacfwd(whitened, has_aux=True), in_axes=axes)(*inputs)
            pieces.append(w)
            jacobians.append(jac)
        return pieces, jacobians

    def hessian_solve(
        self, x: Float[Array, " n"], args: PyTree, rhs: Float[Array, " n"], exact: bool
    ) -> Float[Array, " n"]:
        zero = jnp.zeros((self.structure.n,), self.dtype)
        if exact:
            # each term's exact D×D Hessian (residual curvature and the loss's ρ'' included): the cost's
            # Hessian is their sum over the variables they connect
            products = tuple(
                jax.vmap(jax.hessian(self._term_cost(term, loss)), in_axes=axes)(*inputs)
                for term, inputs, axes, loss in self._groups(x, args)
            )
            operator = NormalOperator(structure=self.structure, jacobians=None, products=products, damping=zero)
        else:
            _, jacobians = self.whitened_jacobians(x, args)
            operator = NormalOperator(structure=self.structure, jacobians=tuple(jacobians), products=None, damping=zero)
        return self.linear_solver.solve_operator(operator, rhs)

    def gauss_newton_step(self, x: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        pieces, jacobians = self.whitened_jacobians(x, args)
        gradient = self.structure.transpose_times(jacobians, pieces)
        operator = NormalOperator(
            structure=self.structure, jacobians=tuple(jacobians), products=None, damping=jnp.zeros_like(gradient)
        )
        return x + self.linear_solver.solve_operator(operator, -gradient)
