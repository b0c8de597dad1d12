"""The result of a solve: arrays only, so it can be vmapped, returned from jit and stacked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._status import CONVERGED, Status

if TYPE_CHECKING:
    from ._covariance import Covariance


class History(eqx.Module):
    """The last K iterations of a solve (``history=K``), oldest first; rows past the iterations run are NaN.
    Each field has shape ``(*batch, K)``. Row 0 of a solve of at most K - 1 steps is its start (iteration 0).

    Attributes:
        iteration: the step count of the row.
        cost: ½‖r‖² at the current point after that iteration.
        cost_change: the decrease that step achieved (0 where rejected).
        gradient_norm: ``max|Jᵀr|`` at the current point.
        step_norm: ``max|δ|`` of the step tried.
        control: damping (LM), radius (Dogleg, IndirectLM) or step length (Gauss-Newton).
        accepted: 1.0 where the trial was taken (the start counts as taken).
    """

    iteration: Float[Array, "*batch K"]
    cost: Float[Array, "*batch K"]
    cost_change: Float[Array, "*batch K"]
    gradient_norm: Float[Array, "*batch K"]
    step_norm: Float[Array, "*batch K"]
    control: Float[Array, "*batch K"]
    accepted: Float[Array, "*batch K"]


class Solution(eqx.Module):
    """Outcome of :func:`jaxnls.solve`. With ``batched=True`` every field has a leading batch axis.

    Attributes:
        params: the parameters at the end, same pytree structure and dtypes as ``params0``.
        cost: final ``0.5 * sum(r**2)``.
        initial_cost: cost at ``params0``.
        gradient_norm: ``max|Jᵀr|`` at the final parameters (NaN for ``NONFINITE_START``: there is none).
        num_steps: iterations taken (each one trial step, accepted or not).
        num_accepted: accepted steps among them.
        status: a :class:`jaxnls.Status` code per problem.
        num_residuals: m, the scalar residuals of one problem (static).
        num_params: n, the parameters of one problem, counted in the tangent space for Lie-group leaves
            (static).
        method: the solver and linear solver, e.g. ``"LevenbergMarquardt, QR"`` (static; headlines
            :meth:`summary`).
        history: with ``history=K``, the last K iterations' figures (:class:`History`), else None.
    """

    params: PyTree
    cost: Float[Array, "*batch"]
    initial_cost: Float[Array, "*batch"]
    gradient_norm: Float[Array, "*batch"]
    num_steps: Int[Array, "*batch"]
    num_accepted: Int[Array, "*batch"]
    status: Int[Array, "*batch"]
    num_residuals: int = eqx.field(static=True)
    num_params: int = eqx.field(static=True)
    method: str = eqx.field(static=True)
    history: History | None = None

    @property
    def converged(self) -> Bool[Array, "*batch"]:
        """True where the solve stopped on a function, parameter or gradient tolerance."""
        return jnp.isin(self.status, jnp.asarray([int(s) for s in CONVERGED]))

    def summary(
        self, covariance: Covariance | None = None, names: Sequence[str] | None = None, min_correlation: float = 0.5
    ) -> str:
        """A Ceres-style report (a batch gets ranges and a count per termination reason).

        Args:
            covariance: a :class:`jaxnls.Covariance` of this (unbatched) solution: adds lmfit's parameter
                table (value, standard error, relative error) and the correlations above ``min_correlation``.
            names: the parameters' names in ravelled order (default from the params pytree: ``[0]``,
                ``['a'][1]``, ...).
            min_correlation: correlations of magnitude above this are listed (with ``covariance``).

        Returns:
            The report, lines joined by newlines.
        """
        if covariance is None:
            return self._run_summary()
        return self._run_summary() + "\n\n" + self._parameter_table(covariance, names, min_correlation)

    def _parameter_table(self, covariance, names, min_correlation: float) -> str:
        errors = np.asarray(covariance.standard_errors, dtype=np.float64)
        if errors.ndim != 1:
            raise ValueError(
                "Solution.summary(covariance=...) takes the covariance of one problem; index the batch "
                "(e.g. jax.tree_util.tree_map(lambda a: a[i], cov)) first"
            )
        values = np.concatenate(
            [np.ravel(np.asarray(leaf, dtype=np.float64)) for leaf in jax.tree_util.tree_leaves(self.params)]
        )
        n = errors.size
        if names is None:
            names = _leaf_names(self.params) if values.size == n else [f"δ[{i}]" for i in range(n)]
        names = [str(name) for name in names]
        if len(names) != n:
            raise ValueError(f"Solution.summary: {len(names)} names for {n} parameters")
        rank = int(covariance.rank)
        lines = [
            f"Parameters (standard errors from s²·(JᵀJ)⁻¹, s² = {float(covariance.residual_variance):.6e}; "
            f"rank {rank}/{n}{'' if rank == n else ': some combinations are not determined by the data'}):"
        ]
        width = max(8, *(len(name) for name in names))
        lines.append(f"  {'name':<{width}} {'value':>18} {'std. error':>14} {'rel. error':>11}")
        for i, name in enumerate(names):
            value = values[i] if values.size == n else float("nan")
            relative = abs(errors[i] / value) if values.size == n and value != 0 else float("nan")
            shown = f"{value:>18.10e}" if values.size == n else f"{'(tangent)':>18}"
            lines.append(f"  {name:<{width}} {shown} {errors[i]:>14.6e} {relative:>10.3%}")
        correlation = np.asarray(covariance.correlation, dtype=np.float64)
        pairs = [
            (abs(correlation[i, j]), i, j)
            for i in range(n)
            for j in range(i + 1, n)
            if abs(correlation[i, j]) > min_correlation
        ]
        if pairs:
            lines.append(f"Correlations above {min_correlation:g} in magnitude:")
            for _, i, j in sorted(pairs, reverse=True):
                lines.append(f"  ({names[i]}, {names[j]}) {correlation[i, j]:+.4f}")
        return "\n".join(lines)

    def _run_summary(self) -> str:
        status = np.atleast_1d(np.asarray(self.status))
        cost = np.atleast_1d(np.asarray(self.cost))
        initial = np.atleast_1d(np.asarray(self.initial_cost))
        steps = np.atleast_1d(np.asarray(self.num_steps))
        accepted = np.atleast_1d(np.asarray(self.num_accepted))
        grad = np.atleast_1d(np.asarray(self.gradient_norm))
        lines = [f"jaxnls solver summary ({self.method})", ""]
        row = "{:<28}{:>22}".format
        lines += [
            row("Problems", status.size),
            row("Parameters", self.num_params),
            row("Residuals", self.num_residuals),
            "",
        ]
        if status.size == 1:
            lines += [
                "Cost:",
                row("Initial", f"{initial[0]:.6e}"),
                row("Final", f"{cost[0]:.6e}"),
                row("Change", f"{initial[0] - cost[0]:.6e}"),
                "",
                row("Minimizer iterations", steps[0]),
                row("Successful steps", accepted[0]),
                row("Unsuccessful steps", steps[0] - accepted[0]),
                row("Gradient max-norm", f"{grad[0]:.3e}"),
                "",
                f"Termination: {_verdict(status[0])}",
            ]
            return "\n".join(lines)

        def spread(values, fmt):
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                return "all non-finite"
            lo, med, hi = np.min(finite), np.median(finite), np.max(finite)
            note = "" if finite.size == values.size else f"  ({values.size - finite.size} non-finite)"
            return f"{fmt(lo)} / {fmt(med)} / {fmt(hi)}{note}"

        exp = "{:.3e}".format
        lines += [
            "Per problem (min / median / max):",
            f"  Initial cost          {spread(initial, exp)}",
            f"  Final cost            {spread(cost, exp)}",
            f"  Iterations            {spread(steps, lambda v: f'{v:g}')}",
            f"  Successful steps      {spread(accepted, lambda v: f'{v:g}')}",
            f"  Gradient max-norm     {spread(grad, exp)}",
            "",
            "Termination:",
        ]
        codes, counts = np.unique(status, return_counts=True)
        lines += [f"  {count:>8}  {_verdict(code)}" for code, count in zip(codes, counts)]
        return "\n".join(lines)


def _leaf_names(params) -> list[str]:
    """``path[index]`` for every entry of every leaf, in ravel_pytree's order."""
    names = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        prefix = jax.tree_util.keystr(path) or "p"
        shape = np.shape(leaf)
        if not shape:
            names.append(prefix)
            continue
        names += [f"{prefix}[{', '.join(map(str, index))}]" for index in np.ndindex(*shape)]
    return names


def _verdict(code) -> str:
    status = Status(int(code))
    kind = "CONVERGENCE" if status.converged else "NO_CONVERGENCE"
    return f"{kind} - {status.name}: {status.message}"
