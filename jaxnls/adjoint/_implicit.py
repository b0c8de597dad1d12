r"""Implicit differentiation of the solution of a least-squares problem.

At a minimiser :math:`x^*(θ)` of :math:`c(x, θ) = \tfrac12\|r(x, θ)\|^2` the gradient vanishes,
:math:`g(x^*(θ), θ) = \nabla_x c = J^\top r = 0`, so by the implicit function theorem

.. math::  \dot x^* = -H^{-1}\,\partial_θ g\,\dot θ,\qquad
           H = \nabla_x^2 c = J^\top J + \textstyle\sum_i r_i \nabla_x^2 r_i ,

and the cost at the solution moves by :math:`\dot c = g^\top \dot x^* + \partial_θ c\,\dot θ`. The rule
is a forward-mode (JVP) rule that is linear in :math:`\dot θ`, so JAX transposes it for reverse mode and
differentiates it again for second order (``jax.hessian``, ``jax.jvp`` of ``jax.grad``). The solver's
iterations are never differentiated: the starting point gets no gradient.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PyTree

from .._jacobian import residual_and_jacobian
from .._status import Status
from ..linear import Cholesky


class AbstractAdjointProblem(eqx.Module):
    r"""What the adjoints need of ONE least-squares problem :math:`c(x, θ) = \tfrac12\|r(x, θ)\|^2`.

    :class:`DenseProblem` (a flat residual, dense Jacobians: :func:`jaxnls.solve`) and the factor
    graphs' block-sparse problem (:func:`jaxnls.graph.solve`) implement it. Every field is static: a
    problem is the structure, ``args`` carry the data.
    """

    @abc.abstractmethod
    def cost(self, x: Float[Array, " n"], args: PyTree) -> Float[Array, ""]:
        """:math:`c(x, θ)`."""

    @abc.abstractmethod
    def hessian_solve(
        self, x: Float[Array, " n"], args: PyTree, rhs: Float[Array, " n"], exact: bool
    ) -> Float[Array, " n"]:
        r""":math:`H^{-1}` ``rhs`` with :math:`H = J^\top J` (+ :math:`\sum_i r_i\nabla^2 r_i` if ``exact``),
        linear in ``rhs`` (JAX transposes it), regularised so that a singular :math:`H` gives a finite value."""

    @abc.abstractmethod
    def gauss_newton_step(self, x: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        r""":math:`x - (J^\top J)^{-1} J^\top r`, differentiable in ``x`` and ``args``."""


class DenseProblem(AbstractAdjointProblem):
    """A problem given by its flat residual ``residual(x, args) -> (m,)``: dense Jacobians and solves.

    Attributes:
        residual: ``residual(x, args) -> r``, ``x`` of shape ``(n,)`` and ``r`` of shape ``(m,)``, for one
            problem (static).
    """

    residual: Callable[[Float[Array, " n"], PyTree], Float[Array, " m"]] = eqx.field(static=True)

    def cost(self, x: Float[Array, " n"], args: PyTree) -> Float[Array, ""]:
        return 0.5 * jnp.sum(self.residual(x, args) ** 2)

    def hessian_solve(
        self, x: Float[Array, " n"], args: PyTree, rhs: Float[Array, " n"], exact: bool
    ) -> Float[Array, " n"]:
        jac = jax.jacfwd(self.residual)(x, args)
        hessian = jac.T @ jac
        if exact:
            hessian = hessian + _residual_curvature(self.residual, x, args)
        return _regularised_solve(hessian, rhs)

    def gauss_newton_step(self, x: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        r, jac = residual_and_jacobian(self.residual, x, args, jax.eval_shape(self.residual, x, args).shape[0])
        solver = Cholesky()
        return x + solver.solve(solver.linearize(r, jac), jnp.zeros_like(x))


class AbstractAdjoint(eqx.Module):
    """How :func:`jaxnls.solve` differentiates its solution with respect to ``args``."""

    #: True: the solve's own iterations are differentiated (a bounded, differentiable loop runs);
    #: False: the loop runs undifferentiated and :meth:`attach` supplies the derivatives.
    differentiates_iterations: ClassVar[bool] = False
    #: With ``differentiates_iterations``: rematerialise each iteration in the backward pass (memory of
    #: one loop state per iteration instead of every intermediate).
    checkpoint: ClassVar[bool] = False

    @abc.abstractmethod
    def attach(
        self,
        problem: AbstractAdjointProblem,
        x: Float[Array, "batch n"],
        cost: Float[Array, " batch"],
        status: Int[Array, " batch"],
        args: PyTree,
        axes: PyTree,
    ) -> tuple[Float[Array, "batch n"], Float[Array, " batch"]]:
        """Return ``x`` and ``cost`` (unchanged values) carrying this adjoint's derivative rule.

        ``problem`` answers for one problem (:class:`AbstractAdjointProblem`); ``args`` holds arrays only
        (None in place of static leaves); ``axes`` says which ``args`` leaves carry the batch axis (``0``)
        and which are shared (``None``).
        """


class Implicit(AbstractAdjoint):
    r"""Implicit-function-theorem derivatives at the returned solution (the default).

    Args:
        hessian: ``"exact"`` (default) uses the full Hessian of the cost,
            :math:`J^\top J + \sum_i r_i \nabla^2 r_i`, which makes the derivative exact at a minimum
            of any residual size. ``"gauss_newton"`` drops the second-order term (:math:`J^\top J`
            only): cheaper, exact for zero-residual fits, and off by a relative amount of the order
            of the residual curvature otherwise (2-3 % on NIST's Rat43).

    The linear system is regularised by :math:`μ = 10\,n\,ε\,\max_j|H_{jj}|` on its diagonal, far below
    the size of any meaningful curvature, so a singular :math:`H` (a rank-deficient problem, a
    non-converged point) gives a finite derivative instead of NaN; problems whose solution is not
    finite get a zero derivative. ``Solution.status`` says whether the point was a converged minimum,
    i.e. whether the derivative is that of a minimiser.
    """

    hessian: Literal["exact", "gauss_newton"] = "exact"

    def __check_init__(self):
        if self.hessian not in ("exact", "gauss_newton"):
            raise ValueError(f"Implicit(hessian=...) must be 'exact' or 'gauss_newton', got {self.hessian!r}")

    def attach(
        self,
        problem: AbstractAdjointProblem,
        x: Float[Array, "batch n"],
        cost: Float[Array, " batch"],
        status: Int[Array, " batch"],
        args: PyTree,
        axes: PyTree,
    ) -> tuple[Float[Array, "batch n"], Float[Array, " batch"]]:
        return _implicit_solution(_Rule(problem, axes, self.hessian == "exact"), x, cost, status, args)


class _Rule(eqx.Module):
    """The static part of the implicit and direct-loss rules."""

    problem: AbstractAdjointProblem = eqx.field(static=True)
    axes: PyTree = eqx.field(static=True)
    exact: bool = eqx.field(static=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _implicit_solution(rule: _Rule, x, cost, status, arrays):
    del rule, status, arrays
    return x, cost


@_implicit_solution.defjvp
def _implicit_solution_jvp(rule: _Rule, primals, tangents):
    x, cost, status, args = primals
    *_, args_dot = tangents
    # The solution as a differentiable function of args (this rule again): when the rule itself is
    # differentiated (second order), H and the couplings below then move with x*(θ) as they must.
    x, cost = _implicit_solution(rule, x, cost, status, args)
    # only floating leaves have tangents; integer ones are data (their float0 tangents are dropped)
    floating = jax.tree_util.tree_map(lambda a: jnp.issubdtype(a.dtype, jnp.inexact), args)
    args_dot = jax.tree_util.tree_map(lambda f, d: d if f else None, floating, args_dot)
    usable = jnp.all(jnp.isfinite(x), axis=-1) & (status != Status.NONFINITE_START)
    x_dot, cost_dot = jax.vmap(functools.partial(_tangent, rule, floating), in_axes=(0, 0, rule.axes, rule.axes))(
        usable, x, args, args_dot
    )
    x_dot = jnp.where(usable[:, None], x_dot, 0.0)
    cost_dot = jnp.where(usable, cost_dot, 0.0)
    return (x, cost), (x_dot, cost_dot)


def _tangent(rule: _Rule, floating, usable, x, args, args_dot):
    """ẋ and ċ of one problem (the rule above, per batch element)."""
    # a non-finite solution gets a zero tangent (masked by the caller); keep its algebra finite
    x = jnp.where(jnp.isfinite(x), x, 0.0)
    # ... and θ̇ is masked on the way in too: at a finite x whose residual is not (a start where exp()
    # overflows) H and ∂_θ g hold infinities, and the caller's mask alone, transposed for reverse mode,
    # sends a zero cotangent through them: 0·∞ = NaN in θ̄, which shared args sum over the batch
    args_dot = jax.tree_util.tree_map(lambda d: jnp.where(usable, d, 0.0), args_dot)

    def with_floats(floats):
        return jax.tree_util.tree_map(
            lambda f, a, b: b if f else a, floating, args, floats, is_leaf=lambda a: a is None
        )

    floats = jax.tree_util.tree_map(lambda f, a: a if f else None, floating, args)

    # ∇ₓc, and ∂_θ g·θ̇ and ∂_θ c·θ̇ at the solution, from one forward pass over θ
    (_, gradient), (cost_partial, coupling) = jax.jvp(
        lambda f: jax.value_and_grad(rule.problem.cost)(x, with_floats(f)), (floats,), (args_dot,)
    )
    x_dot = -rule.problem.hessian_solve(x, args, coupling, rule.exact)
    cost_dot = gradient @ x_dot + cost_partial
    return x_dot, cost_dot


def _residual_curvature(residual_fn, x, args) -> Float[Array, "n n"]:
    r""":math:`\sum_i r_i \nabla^2 r_i`, one entry :math:`r^\top \partial^2 r[e_j, e_k]` at a time by
    forward-over-forward differentiation: no reverse-mode residuals are stored, so the memory is that
    of a few residual evaluations whatever n (the batch's Hessians cost little more than JᵀJ)."""
    n = x.shape[0]
    residual = residual_fn(x, args)
    rows, cols = np.triu_indices(n)
    basis = jnp.eye(n, dtype=x.dtype)

    def entry(pair):
        j, k = pair
        along_j = lambda z: jax.jvp(lambda v: residual_fn(v, args), (z,), (basis[j],))[1]
        return residual @ jax.jvp(along_j, (x,), (basis[k],))[1]

    upper = jax.lax.map(entry, (jnp.asarray(rows), jnp.asarray(cols)))
    curvature = jnp.zeros((n, n), x.dtype).at[rows, cols].set(upper)
    return curvature + jnp.triu(curvature, 1).T


def _regularised_solve(matrix: Float[Array, "n n"], rhs: Float[Array, " n"]) -> Float[Array, " n"]:
    """``matrix⁻¹ rhs`` with a tiny diagonal shift; zero for a matrix without information. Every mask
    depends on ``matrix`` alone, so the result stays linear in ``rhs`` (transposable)."""
    n = matrix.shape[0]
    size = jnp.max(jnp.abs(jnp.diagonal(matrix)))
    usable = jnp.all(jnp.isfinite(matrix)) & (size > 0)
    shift = 10 * n * jnp.finfo(matrix.dtype).eps * size
    safe = jnp.where(usable, matrix + shift * jnp.eye(n, dtype=matrix.dtype), jnp.eye(n, dtype=matrix.dtype))
    return jnp.where(usable, jnp.linalg.solve(safe, rhs), 0.0)


class DirectLossMinimization(AbstractAdjoint):
    r"""Theseus' direct-loss-minimisation estimate of the reverse-mode derivative (reverse mode only).

    With :math:`v = \partial L/\partial x^*` the incoming cotangent, one Gauss-Newton step on the
    perturbed cost :math:`c(x, θ) - ε\,v^\top x` from :math:`x^*` gives
    :math:`\hat x = x^* + ε (J^\top J)^{-1} v`, and the derivative is estimated by the difference

    .. math::  \frac{\partial L}{\partial θ} \approx -\frac{1}{ε}\big(\nabla_θ c(\hat x, θ) - \nabla_θ c(x^*, θ)\big),

    which tends to the Gauss-Newton implicit derivative as :math:`ε \to 0` and needs only gradients of the
    cost with respect to θ (no solve with θ-derivatives). ``epsilon`` trades bias (large) for rounding
    (small). The cost's own cotangent uses the envelope theorem, :math:`∂c^*/∂θ = ∂_θ c(x^*, θ)`.
    Not for rank-deficient problems (parameter combinations the data do not determine, :math:`J^\top J`
    singular): :math:`(J^\top J)^{-1} v` is then regularised only by a shift of ~1e-14 relative, so
    :math:`\hat x` runs off along the undetermined direction and the estimate means nothing (a probe: 6e20
    for a derivative of -0.46); :class:`Implicit` stays finite there.

    Attributes:
        epsilon: the perturbation ε, > 0, default 1e-2.
    """

    epsilon: float = 1e-2

    def __check_init__(self):
        if not self.epsilon > 0:
            raise ValueError(f"DirectLossMinimization(epsilon=...) must be positive, got {self.epsilon!r}")

    def attach(
        self,
        problem: AbstractAdjointProblem,
        x: Float[Array, "batch n"],
        cost: Float[Array, " batch"],
        status: Int[Array, " batch"],
        args: PyTree,
        axes: PyTree,
    ) -> tuple[Float[Array, "batch n"], Float[Array, " batch"]]:
        return _direct_loss_solution(_Rule(problem, axes, False), self.epsilon, x, cost, status, args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _direct_loss_solution(rule: _Rule, epsilon, x, cost, status, args):
    del rule, epsilon, status, args
    return x, cost


def _direct_loss_forward(rule, epsilon, x, cost, status, args):
    return (x, cost), (x, status, args)


def _direct_loss_backward(rule: _Rule, epsilon, residuals, cotangents):
    x, status, args = residuals
    x_bar, cost_bar = cotangents
    usable = jnp.all(jnp.isfinite(x), axis=-1) & (status != Status.NONFINITE_START)

    def per_problem(x, args, x_bar, cost_bar):
        x = jnp.where(jnp.isfinite(x), x, 0.0)
        x_hat = x + epsilon * rule.problem.hessian_solve(x, args, x_bar, False)
        partial = jax.grad(rule.problem.cost, argnums=1)
        return jax.tree_util.tree_map(
            lambda moved, here: -(moved - here) / epsilon + cost_bar * here, partial(x_hat, args), partial(x, args)
        )

    per_problem_bar = jax.vmap(per_problem, in_axes=(0, rule.axes, 0, 0), out_axes=0)(x, args, x_bar, cost_bar)
    # shared (unbatched) args collect the cotangents of every problem; batched ones keep theirs. (An axis may
    # stand for a whole subtree, e.g. None for a robust loss: it applies to each of the subtree's leaves.)
    args_bar = jax.tree_util.tree_map(
        lambda axis, bars: jax.tree_util.tree_map(
            lambda bar: (
                jnp.sum(jnp.where(_expand(usable, bar), bar, 0.0), axis=0)
                if axis is None
                else jnp.where(_expand(usable, bar), bar, 0.0)
            ),
            bars,
        ),
        rule.axes,
        per_problem_bar,
        is_leaf=lambda a: a is None,
    )
    args_bar = jax.tree_util.tree_map(
        lambda a, bar: bar if jnp.issubdtype(a.dtype, jnp.inexact) else np.zeros(a.shape, jax.dtypes.float0),
        args,
        args_bar,
    )
    return None, None, None, args_bar


def _expand(mask, like):
    return jnp.reshape(mask, mask.shape + (1,) * (like.ndim - 1))


_direct_loss_solution.defvjp(_direct_loss_forward, _direct_loss_backward)
