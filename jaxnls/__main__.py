"""Command line: ``jaxnls demo`` and ``jaxnls solve FILE.dat`` (NIST StRD nonlinear regression files).

Exit status: 0 on success, 1 when the solver did not converge (``solve``), 2 for a bad command line, a
missing file or a malformed NIST file (the message, with the line number, goes to stderr).
"""

from __future__ import annotations

import argparse
import sys
import time

#: The settings used by ``jaxnls solve``, ``jaxnls demo`` and tests/test_nist.py: Levenberg-Marquardt on
#: Householder QR (accuracy governed by cond(J), not cond(J)²), stopping on the parameter test alone
#: (every step below 1e-10 relative; ftol = gtol = 0), with no absolute step tolerance so that tiny
#: parameters such as Nelson's b2 ≈ 5.6e-9 are judged relatively.
TOLERANCES = dict(rtol=1e-10, atol=0.0, ftol=0.0, gtol=0.0)
MAX_STEPS = 3000
DEMO_PROBLEM = "Eckerle4.dat"


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)


def make_solver(name: str = "lm"):
    """The solver of the CLI and the NIST tests, all on QR: ``lm`` (:class:`jaxnls.IndirectLevenbergMarquardt`,
    MINPACK's trust-region form, which follows the scale changes of hard single fits such as NIST MGH10),
    ``gn`` or ``dogleg``."""
    import jaxnls

    cls = {"lm": jaxnls.IndirectLevenbergMarquardt, "gn": jaxnls.GaussNewton, "dogleg": jaxnls.Dogleg}[name]
    return cls(**TOLERANCES, linear_solver=jaxnls.QR())


def comparison_table(problem, params, start: int) -> str:
    """Our parameters and residual sum of squares beside NIST's certified values, with the LRE."""
    import numpy as np

    from .io import log_relative_error

    params = np.asarray(params, dtype=np.float64)
    lre = log_relative_error(params, problem.certified_values)
    rss = float(problem.rss(params))
    rss_lre = float(log_relative_error(rss, problem.certified_rss))
    head = f"{'':<6}{'start ' + str(start):>14}{'jaxnls':>22}{'certified':>22}{'cert. std dev':>18}{'LRE':>7}"
    lines = [head, "-" * len(head)]
    for i, name in enumerate(problem.parameter_names):
        lines.append(f"{name:<6}{problem.starts[start - 1, i]:>14.6g}{params[i]:>22.10E}"
                     f"{problem.certified_values[i]:>22.10E}{problem.certified_std_devs[i]:>18.6E}{lre[i]:>7.1f}")
    lines.append(f"{'RSS':<6}{'':>14}{rss:>22.10E}{problem.certified_rss:>22.10E}{'':>18}{rss_lre:>7.1f}")
    lines.append("-" * len(head))
    lines.append(f"LRE = -log10(|jaxnls - certified| / |certified|), capped at 15; NIST certifies 11 significant "
                 f"digits.\nMinimum LRE over the parameters: {lre.min():.1f}")
    return "\n".join(lines)


def _describe(problem) -> str:
    return (f"{problem.name}: NIST StRD nonlinear regression, {problem.difficulty} level of difficulty, "
            f"{problem.num_observations} observations, {problem.num_params} parameters\n"
            f"Model: {problem.model}  + e")


def _solve_command(args) -> int:
    from .io import NistFormatError, read_nist

    try:
        problem = read_nist(args.file)
    except NistFormatError as err:
        print(f"jaxnls: malformed NIST file: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"jaxnls: cannot read {args.file}: {err.strerror or err}", file=sys.stderr)
        return 2
    import jax.numpy as jnp

    import jaxnls

    print(_describe(problem))
    print()
    solver = make_solver(args.solver)
    start = time.perf_counter()
    sol = jaxnls.solve(problem.residual_fn, jnp.asarray(problem.starts[args.start - 1]), problem.args,
                       solver=solver, max_steps=args.max_steps, verbose=args.verbose)
    sol.params.block_until_ready()
    elapsed = time.perf_counter() - start
    print(sol.summary())
    print(f"Time (including compilation)  {elapsed:.2f} s")
    print()
    print(comparison_table(problem, sol.params, args.start))
    return 0 if bool(sol.converged) else 1


def _demo_command(args) -> int:
    import importlib.resources

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxnls

    from .io import parse_nist

    resource = importlib.resources.files("jaxnls") / "data" / DEMO_PROBLEM
    problem = parse_nist(resource.read_bytes(), f"jaxnls/data/{DEMO_PROBLEM}")
    solver = make_solver("lm")

    print("=" * 78)
    print("1. One real problem, from NIST's first (harder) starting point, in float64")
    print("=" * 78)
    print(_describe(problem))
    print()
    t0 = time.perf_counter()
    sol = jaxnls.solve(problem.residual_fn, jnp.asarray(problem.starts[0]), problem.args,
                       solver=solver, max_steps=MAX_STEPS)
    sol.params.block_until_ready()
    t1 = time.perf_counter()
    print(sol.summary())
    print(f"Time (including compilation)  {t1 - t0:.2f} s")
    print()
    print(comparison_table(problem, sol.params, 1))

    print()
    print("=" * 78)
    print(f"2. A batch: {args.batch} synthetic replicas of {problem.name} in one compiled call")
    print("=" * 78)
    print(f"Each replica is the certified curve plus fresh Gaussian noise with NIST's residual standard\n"
          f"deviation ({problem.certified_residual_sd:.4g}); every replica is fitted from NIST's start 2 with "
          "its own\ndamping and stopping. The spread of the fitted parameters over the batch should match "
          "NIST's\ncertified standard deviations (which come from the linearised covariance).\n")
    rng = np.random.default_rng(0)
    clean = problem.residual_fn.predict(problem.certified_values, problem.x, xp=np)
    y = clean[None, :] + problem.certified_residual_sd * rng.standard_normal((args.batch, problem.num_observations))
    params0 = np.broadcast_to(problem.starts[1], (args.batch, problem.num_params)).copy()
    t0 = time.perf_counter()
    batch = jaxnls.solve(problem.residual_fn, jnp.asarray(params0), (problem.x, jnp.asarray(y)), solver=solver,
                         max_steps=MAX_STEPS, batched=True, args_axes=(None, 0))
    batch.params.block_until_ready()
    t1 = time.perf_counter()
    again = jaxnls.solve(problem.residual_fn, jnp.asarray(params0), (problem.x, jnp.asarray(y)), solver=solver,
                         max_steps=MAX_STEPS, batched=True, args_axes=(None, 0))
    again.params.block_until_ready()
    t2 = time.perf_counter()
    print(batch.summary())
    print(f"Time: {t1 - t0:.2f} s with compilation, {t2 - t1:.3f} s for a second call "
          f"({1e6 * (t2 - t1) / args.batch:.0f} µs per fit) on {jax.devices()[0].platform.upper()}")
    fitted = np.asarray(batch.params)[np.asarray(batch.converged)]
    print()
    print(f"{'':<6}{'batch mean':>18}{'certified':>18}{'batch std dev':>16}{'cert. std dev':>16}")
    for i, name in enumerate(problem.parameter_names):
        print(f"{name:<6}{fitted[:, i].mean():>18.8g}{problem.certified_values[i]:>18.8g}"
              f"{fitted[:, i].std(ddof=1):>16.4g}{problem.certified_std_devs[i]:>16.4g}")
    print(f"({fitted.shape[0]} converged fits of {args.batch})")
    return 0


def main(argv=None) -> int:
    """Entry point of the ``jaxnls`` console script and ``python -m jaxnls``."""
    parser = argparse.ArgumentParser(prog="jaxnls", description="Batched nonlinear least squares in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fit a NIST problem shipped with jaxnls, then a batch of 1,024 fits")
    demo.add_argument("--batch", type=int, default=1024, help="size of the synthetic batch (default 1024)")
    solve = commands.add_parser("solve", help="fit a NIST StRD nonlinear regression .dat file")
    solve.add_argument("file", help="path to a NIST StRD .dat file")
    solve.add_argument("--start", type=int, choices=(1, 2), default=1, help="NIST starting point (default 1)")
    solve.add_argument("--solver", choices=("lm", "gn", "dogleg"), default="lm",
                       help="Levenberg-Marquardt (MINPACK's trust-region form), Gauss-Newton or dogleg (all on QR; default lm)")
    solve.add_argument("--max-steps", type=int, default=MAX_STEPS, help=f"iteration limit (default {MAX_STEPS})")
    solve.add_argument("--verbose", action="store_true", help="print one line per iteration")
    args = parser.parse_args(argv)
    if getattr(args, "batch", 1) < 1:
        parser.error("--batch must be at least 1")
    _enable_x64()
    if args.command == "demo":
        return _demo_command(args)
    return _solve_command(args)


if __name__ == "__main__":
    sys.exit(main())
