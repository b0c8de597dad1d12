"""Command line: ``jaxnls demo`` and ``jaxnls solve FILE``, where FILE is a NIST StRD nonlinear
regression ``.dat`` file, a g2o or TORO pose graph, or a BAL bundle-adjustment problem (the format is
recognised from the file's records).

Exit status: 0 on success, 1 when the solver did not converge (``solve``), 2 for a bad command line, a
missing file, a malformed file (the message, with the line number, goes to stderr) or an output that cannot
be written (checked before solving: never the input file, never a non-regular file, an existing writable
folder). ``--output`` is written atomically and only for a converged solve unless ``--write-unconverged``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from typing import TYPE_CHECKING, NoReturn

from ._driver import MAX_STEPS_LIMIT

if TYPE_CHECKING:
    from collections.abc import Iterator

    from jaxtyping import ArrayLike

    from .io import NistProblem
    from .solvers import AbstractLeastSquaresSolver

#: The settings used by ``jaxnls solve``, ``jaxnls demo`` and tests/test_nist.py: Levenberg-Marquardt on
#: Householder QR (accuracy governed by cond(J), not cond(J)²), stopping on the parameter test alone
#: (every step below 1e-10 relative; ftol = gtol = 0), with no absolute step tolerance so that tiny
#: parameters such as Nelson's b2 ≈ 5.6e-9 are judged relatively.
TOLERANCES = dict(rtol=1e-10, atol=0.0, ftol=0.0, gtol=0.0)
MAX_STEPS = 3000
DEMO_PROBLEM = "Eckerle4.dat"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxnls")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "(not installed)"


def _one_malloc_arena():
    """Ask glibc's allocator for a single arena for this process, unless ``MALLOC_ARENA_MAX`` says otherwise.

    By default glibc gives threads their own arenas (up to 8 per core), and XLA's worker threads allocate and
    free in them: every arena keeps the freed memory for reuse, so a graph solve's peak resident memory is
    the sum of what each thread ever held. One arena: w10000 0.64 -> 0.55 GB peak, the same wall time (2
    cores; benchmarks/README.md (v)). The console process's choice (:func:`console`): neither the library nor
    :func:`main` called from another program changes that program's allocator."""
    import platform

    if "MALLOC_ARENA_MAX" in os.environ or platform.libc_ver()[0] != "glibc":
        return
    import ctypes

    m_arena_max = -8  # glibc's malloc.h
    ctypes.CDLL(None).mallopt(m_arena_max, 1)


def _cache_folder() -> str:
    """Where the command line keeps JAX's persistent compilation cache: ``$JAXNLS_CACHE_DIR`` if set, else
    ``$XDG_CACHE_HOME/jaxnls/xla`` (``~/.cache/jaxnls/xla``)."""
    if "JAXNLS_CACHE_DIR" in os.environ:
        return os.environ["JAXNLS_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxnls", "xla")


@contextlib.contextmanager
def _command_settings(use_cache: bool) -> Iterator[str | None]:
    """JAX's settings for one command, put back as they were when it returns: float64 on, and JAX's persistent
    compilation cache in :func:`_cache_folder` (every compiled program that took more than 0.1 s) unless
    ``use_cache`` is false, the folder is empty-named or cannot be created, or the calling program already keeps
    a cache of its own (then that one serves). Yields the folder, or None.

    Put back because :func:`main` may run inside another program, whose float32 arrays and compilation
    settings are its own; the console process ends with the command anyway."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    global_values = jax.config.values  # (the process-wide values, which are what this changes)
    x64 = global_values["jax_enable_x64"]
    own_cache = global_values["jax_compilation_cache_dir"]
    min_compile_time = global_values["jax_persistent_cache_min_compile_time_secs"]
    folder = _cache_folder() if use_cache else ""
    try:
        if folder:
            os.makedirs(folder, exist_ok=True)
    except OSError:
        folder = ""
    jax.config.update("jax_enable_x64", True)
    if folder and own_cache is None:
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    try:
        yield folder or None
    finally:
        jax.config.update("jax_enable_x64", x64)
        if folder and own_cache is None:
            jax.config.update("jax_compilation_cache_dir", None)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time)
            compilation_cache.reset_cache()  # (JAX opens its cache once per process; closed again here)


def make_solver(name: str = "lm") -> AbstractLeastSquaresSolver:
    """The solver of the CLI and the NIST tests, all on QR: ``lm`` (:class:`jaxnls.IndirectLevenbergMarquardt`,
    MINPACK's trust-region form, which follows the scale changes of hard single fits such as NIST MGH10),
    ``gn`` or ``dogleg``."""
    import jaxnls

    cls = {"lm": jaxnls.IndirectLevenbergMarquardt, "gn": jaxnls.GaussNewton, "dogleg": jaxnls.Dogleg}[name]
    return cls(**TOLERANCES, linear_solver=jaxnls.QR())


def comparison_table(
    problem: NistProblem, params: ArrayLike, start: int, standard_errors: ArrayLike | None = None
) -> str:
    """Our parameters and residual sum of squares beside NIST's certified values, with the LRE; with
    ``standard_errors`` (from :func:`jaxnls.covariance`) also ours beside NIST's certified deviations."""
    import numpy as np

    from .io import log_relative_error

    params = np.asarray(params, dtype=np.float64)
    lre = log_relative_error(params, problem.certified_values)
    rss = float(problem.rss(params))
    rss_lre = float(log_relative_error(rss, problem.certified_rss))
    errors = None if standard_errors is None else np.asarray(standard_errors, dtype=np.float64)
    sd_lre = None
    head = f"{'':<6}{'start ' + str(start):>14}{'jaxnls':>22}{'certified':>22}{'LRE':>7}"
    if errors is not None:
        head += f"{'jaxnls std err':>18}{'cert. std dev':>18}{'LRE':>7}"
        sd_lre = log_relative_error(errors, problem.certified_std_devs)
    else:
        head += f"{'cert. std dev':>18}"
    lines = [head, "-" * len(head)]
    for i, name in enumerate(problem.parameter_names):
        line = (
            f"{name:<6}{problem.starts[start - 1, i]:>14.6g}{params[i]:>22.10E}"
            f"{problem.certified_values[i]:>22.10E}{lre[i]:>7.1f}"
        )
        if errors is not None and sd_lre is not None:
            line += f"{errors[i]:>18.6E}{problem.certified_std_devs[i]:>18.6E}{sd_lre[i]:>7.1f}"
        else:
            line += f"{problem.certified_std_devs[i]:>18.6E}"
        lines.append(line)
    lines.append(f"{'RSS':<6}{'':>14}{rss:>22.10E}{problem.certified_rss:>22.10E}{rss_lre:>7.1f}")
    lines.append("-" * len(head))
    lines.append(
        f"LRE = -log10(|jaxnls - certified| / |certified|), capped at 15; NIST certifies 11 significant "
        f"digits.\nMinimum LRE over the parameters: {lre.min():.1f}"
    )
    if errors is not None:
        lines.append("Standard errors: jaxnls.covariance, s²·(JᵀJ)⁻¹ with s² = RSS/(n - p), at the answer above.")
    return "\n".join(lines)


def _describe(problem) -> str:
    return (
        f"{problem.name}: NIST StRD nonlinear regression, {problem.difficulty} level of difficulty, "
        f"{problem.num_observations} observations, {problem.num_params} parameters\n"
        f"Model: {problem.model}  + e"
    )


def _solve_command(args) -> int:
    from .io import FileFormatError, detect_format

    if args.output is not None and not args.output:
        print("jaxnls: --output needs a file name", file=sys.stderr)
        return 2
    if os.path.exists(args.file) and not os.path.isdir(args.file) and not os.path.isfile(args.file):
        # a pipe or a terminal (/dev/stdin, <(...)): the format is recognised from a first read, then the file is
        # read again, which a pipe cannot give twice
        print(
            f"jaxnls: cannot read {args.file}: not a regular file (a pipe?); save it to a file first",
            file=sys.stderr,
        )
        return 2
    if args.output:
        problem = _output_problem(args.file, args.output)
        if problem:
            print(f"jaxnls: cannot write {args.output}: {problem}", file=sys.stderr)
            return 2
    try:
        kind = detect_format(args.file)
        if kind == "nist":
            return _solve_nist(args)
        return _solve_graph(args, kind)
    except FileFormatError as err:
        print(f"jaxnls: malformed file: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"jaxnls: cannot read {args.file}: {err.strerror or err}", file=sys.stderr)
        return 2


def _solve_nist(args) -> int:
    import jax.numpy as jnp

    import jaxnls

    from .io import read_nist

    if args.output:
        print("jaxnls: --output applies to pose-graph and BAL files", file=sys.stderr)
        return 2
    for option, given, applies_to in [
        (f"--init {args.init}", args.init != "file", "pose-graph files"),
        (f"--linear-solver {args.linear_solver}", args.linear_solver != "auto", "pose-graph and BAL files"),
        ("--repair-information", args.repair_information, "pose-graph files"),
    ]:
        if given:
            print(f"jaxnls: {option} applies to {applies_to}, not NIST files", file=sys.stderr)
            return 2
    args.start = args.start or 1
    problem = read_nist(args.file)
    solver = make_solver(args.solver or "lm")
    progress = _progress_line(args)
    start = time.perf_counter()
    sol = jaxnls.solve(
        problem.residual_fn,
        jnp.asarray(problem.starts[args.start - 1]),
        problem.args,
        solver=solver,
        max_steps=args.max_steps or MAX_STEPS,
        verbose=args.verbose and not args.json,
        callback=progress,
    )
    sol.params.block_until_ready()
    elapsed = time.perf_counter() - start
    if progress is not None:
        progress.close()
    uncertainty = jaxnls.covariance(problem.residual_fn, sol.params, problem.args)
    status = jaxnls.Status(int(sol.status))
    if args.json:
        print(
            _json_line(
                {
                    "file": args.file,
                    "format": "nist",
                    "problem": problem.name,
                    "start": args.start,
                    "parameter_names": list(problem.parameter_names),
                    "params": [float(v) for v in sol.params],
                    "stderr": [float(v) for v in uncertainty.standard_errors],
                    "rank": int(uncertainty.rank),
                    "initial_cost": float(sol.initial_cost),
                    "final_cost": float(sol.cost),
                    "iterations": int(sol.num_steps),
                    "seconds_with_compilation": elapsed,
                    "status": status.name,
                    "converged": bool(status.converged),
                    "solver": type(solver).__name__,
                    "linear_solver": type(solver.linear_solver).__name__,
                }
            )
        )
        return 0 if status.converged else 1
    print(_describe(problem))
    print()
    print(sol.summary(covariance=uncertainty, names=problem.parameter_names))
    print(f"Time (including compilation)  {elapsed:.2f} s")
    print()
    print(comparison_table(problem, sol.params, args.start, uncertainty.standard_errors))
    return 0 if status.converged else 1


def _json_line(report: dict) -> str:
    """``report`` as one line of strict JSON: a number that is not finite (the cost of a start whose residual
    overflows, say) becomes ``null``, which every JSON reader takes (``NaN`` and ``Infinity`` are not JSON)."""
    import json
    import math

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    return json.dumps({key: finite(value) for key, value in report.items()}, allow_nan=False)


def _output_problem(input_path: str, output_path: str) -> str | None:
    """Why ``output_path`` cannot take the result (checked before solving), or None: the input itself
    (compared as files, so another path to it counts), something that is not a regular file, or a folder
    that does not exist or cannot be written."""
    import os

    if os.path.exists(output_path):
        if os.path.exists(input_path) and os.path.samefile(input_path, output_path):
            return f"it is the input file {input_path}; refusing to overwrite it (choose another --output)"
        if not os.path.isfile(output_path):
            return "it exists and is not a regular file; refusing to replace it"
    if output_path.endswith(("/", os.sep)):
        return "it names a folder, not a file"
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    try:  # (asked of the file system itself: permissions, a read-only mount, a pseudo file system such as /sys)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".jaxnls-check-"):
            pass
    except OSError as err:
        return f"the folder {folder} cannot take a new file ({err.strerror or err})"
    return None


SOLVE_EPILOG = f"""\
formats (recognised from the file's records):
  NIST StRD .dat        nonlinear regression with certified values (report: LRE per parameter)
  g2o                   VERTEX_SE2/XY, EDGE_SE2/SE2_XY, VERTEX_SE3:QUAT, EDGE_SE3:QUAT, FIX
  TORO                  VERTEX2/EDGE2, VERTEX3/EDGE3, EQUIV
                        (a g2o or TORO file of edges only starts from the chained odometry, said on stderr)
  BAL                   bundle adjustment in the large (num_cameras num_points num_observations ...)

solvers: NIST files use Levenberg-Marquardt in MINPACK's trust-region form on QR with rtol = {TOLERANCES["rtol"]:g}
(every step below that, relative) and ftol = gtol = 0; graphs use dogleg with the library's default
tolerances (rtol = atol = 1e-8, ftol derived from rtol, gtol = rtol; see jaxnls.AbstractLeastSquaresSolver).

environment: JAXNLS_BLAS names the BLAS of CHOLMOD's sparse Cholesky of pose graphs: "scipy" (default: SciPy's,
as JAX's own linear algebra), "bundled" (the serial ATLAS in sparsax's wheel, 3-4x slower), "mkl" (the mkl
wheel: pip install "jaxnls[mkl]"), a path or a name such as "openblas" (jaxnls.graph.use_blas).

progress: on a terminal, a solve running longer than half a second redraws one line on stderr (iteration,
cost, relative decrease, seconds); nothing with --json or --verbose, or when stderr is not a terminal.

exit status: 0 converged; 1 not converged (the result is reported; --output is written only with
--write-unconverged); 2 bad command line, unreadable or malformed file (with its line), nothing to optimise,
or an output that cannot be written (checked before solving)."""


#: iteration limit of graph solves from the command line
GRAPH_MAX_STEPS = 100

#: The pose-graph format an ``--output`` name asks for by its extension; any other name keeps the input's format.
OUTPUT_EXTENSIONS = {".g2o": "g2o", ".graph": "toro", ".toro": "toro"}


def _output_format(output_path: str, kind: str) -> str:
    """The format ``--output`` is written in: the pose-graph format its extension names, else the input's."""
    return OUTPUT_EXTENSIONS.get(os.path.splitext(output_path)[1].lower(), kind)


def _why_not_toro(problem) -> str | None:
    """Why the pose graph ``problem`` (read from a g2o file) cannot be written as TORO without losing part of
    it, or None. TORO has no landmark and no ``FIX`` records; a graph without ``FIX`` holds its first pose, so
    a file whose only ``FIX`` is its first pose loses nothing."""
    landmarks = len(getattr(problem, "landmark_ids", ()))
    if landmarks:
        return f"it has {landmarks} landmark(s), and TORO has no records for landmarks"
    held = sorted({int(i) for i in problem.fixed_ids})
    if held and held != [int(problem.pose_ids[0])]:
        return (
            f"its FIX records hold {', '.join(map(str, held))}, and TORO has no FIX record (a TORO file's first "
            "pose is the one held)"
        )
    return None


def _progress_line(args):
    """A live progress line on stderr for solves that take more than a moment, when stderr is a terminal
    and the output is not --json or the --verbose log (None otherwise: the solve compiles without it)."""
    import jaxnls

    if args.json or args.verbose or not sys.stderr.isatty():
        return None
    return jaxnls.ProgressLine(sys.stderr, delay=0.5, label=f"{args.file}: ")


def _solve_graph(args, kind: str) -> int:
    import dataclasses

    import jax
    import numpy as np

    import jaxnls
    from jaxnls import graph
    from jaxnls.graph import bal_graph_problem, pose_graph_problem, updated_bal, updated_pose_graph

    from .io import BALProblem, read_bal, read_g2o, read_toro, write_bal, write_g2o, write_toro

    if os.environ.get(graph.BLAS_VARIABLE):  # a BLAS named for CHOLMOD: refused here, not inside the solve
        try:
            graph.use_blas(os.environ[graph.BLAS_VARIABLE])
        except (ValueError, RuntimeError) as err:
            print(f"jaxnls: {graph.BLAS_VARIABLE}: {err}", file=sys.stderr)
            return 2
    if args.start is not None:
        print(f"jaxnls: --start {args.start} applies to NIST files (their two certified starts)", file=sys.stderr)
        return 2
    if kind == "bal" and args.init != "file":
        print(f"jaxnls: --init {args.init} applies to pose-graph files, not BAL", file=sys.stderr)
        return 2
    if kind == "bal" and args.repair_information:
        print(
            "jaxnls: --repair-information applies to pose-graph files (BAL has no information matrices)",
            file=sys.stderr,
        )
        return 2
    output_format = _output_format(args.output, kind) if args.output else kind
    if kind == "bal" and output_format != "bal":
        print(
            f"jaxnls: cannot write {args.output}: its extension names a pose-graph format, and a BAL problem is "
            "written in BAL's (name it, e.g., with .txt)",
            file=sys.stderr,
        )
        return 2
    if kind == "bal":
        problem = read_bal(args.file)
        counts = {
            "cameras": problem.cameras.shape[0],
            "points": problem.points.shape[0],
            "observations": problem.observations.shape[0],
        }
        empty = [what for what, count in counts.items() if count == 0]
        if empty:
            print(
                f"jaxnls: {args.file}: nothing to optimise: the problem has no {' and no '.join(empty)}",
                file=sys.stderr,
            )
            return 2
        factor_graph = bal_graph_problem(problem)
        description = (
            f"{args.file}: BAL bundle adjustment, {problem.cameras.shape[0]} cameras, "
            f"{problem.points.shape[0]} points, {problem.observations.shape[0]} observations"
        )
    else:
        read = read_g2o if kind == "g2o" else read_toro  # (the format _solve_command detected)
        problem = read(args.file, repair_information=args.repair_information)
        if problem.repaired_information:
            print(
                f"jaxnls: {args.file}: {problem.repaired_information} information matrices were not positive "
                "definite and were replaced by the nearest positive-definite ones (--repair-information)",
                file=sys.stderr,
            )
        if problem.num_edges == 0:
            print(
                f"jaxnls: {args.file}: nothing to optimise: the pose graph has {problem.num_poses} pose(s) and "
                "no edges",
                file=sys.stderr,
            )
            return 2
        landmark_ids = getattr(problem, "landmark_ids", None)  # (2-D files only)
        vertex_ids = {*problem.pose_ids.tolist(), *([] if landmark_ids is None else landmark_ids.tolist())}
        if vertex_ids <= set(problem.fixed_ids.tolist()):
            print(f"jaxnls: {args.file}: nothing to optimise: every vertex is fixed (FIX)", file=sys.stderr)
            return 2
        if output_format == "toro" and kind != "toro" and (why := _why_not_toro(problem)):
            print(
                f"jaxnls: cannot write {args.output} in TORO's format (its extension): {why}; name it .g2o",
                file=sys.stderr,
            )
            return 2
        if len(problem.equivalences):
            kept = (
                f"g2o has no record for them, so {args.output} will not have them"
                if output_format == "g2o"
                else "they are kept in the output"
            )
            print(
                f"jaxnls: {args.file}: {len(problem.equivalences)} EQUIV record(s) are not used in the solve (as in "
                f"GTSAM): the poses they name stay separate unknowns; {kept}",
                file=sys.stderr,
            )
        if problem.initialized_from_odometry:
            print(
                f"jaxnls: {args.file} has no vertex records: starting from the chained odometry "
                f"({problem.num_poses} poses composed from the edges, the lowest id at the identity)",
                file=sys.stderr,
            )
        if args.init == "chordal":
            try:
                problem = graph.chordal_initialization(problem)
            except ValueError as err:
                print(f"jaxnls: {args.file}: {err}", file=sys.stderr)
                return 2
            print(
                f"jaxnls: {args.file}: starting from the chordal initialisation (rotations from the linear "
                "relaxation, then positions; the file's free poses are not used)",
                file=sys.stderr,
            )
        factor_graph = pose_graph_problem(problem)
        description = f"{args.file}: {kind} pose graph, {problem.num_poses} poses, {problem.num_edges} edges"
    # dogleg by default: the fewest iterations on the large pose graphs (w10000: 9, LM 13; see jaxnls.graph.solve)
    strategy = {"lm": jaxnls.LevenbergMarquardt, "gn": jaxnls.GaussNewton, "dogleg": jaxnls.Dogleg}[
        args.solver or "dogleg"
    ]
    if args.linear_solver == "schur" and not {"point", "landmark"} & set(factor_graph.variables):
        print(
            f"jaxnls: --linear-solver schur eliminates a BAL file's points or a 2-D file's landmarks; {args.file} "
            "has poses only (--linear-solver direct or pcg)",
            file=sys.stderr,
        )
        return 2
    linear = {
        "auto": lambda: graph.default_linear_solver(factor_graph),
        "direct": graph.SparseDirect,
        "schur": lambda: graph.SchurDirect(eliminate="point" if "point" in factor_graph.variables else "landmark"),
        "pcg": graph.PCG,
    }[args.linear_solver]()
    solver = strategy(linear_solver=linear)
    max_steps = args.max_steps or GRAPH_MAX_STEPS
    verbose = args.verbose and not args.json

    progress = _progress_line(args)

    def run():
        solution = graph.solve(factor_graph, solver=solver, max_steps=max_steps, verbose=verbose, callback=progress)
        solution = jax.block_until_ready(solution)
        if progress is not None:
            progress.close()
        return solution

    with _CompileClock() as clock:
        start = time.perf_counter()
        sol = run()
        first = time.perf_counter() - start
    compile_seconds = min(clock.seconds, first)
    status = jaxnls.Status(int(sol.status))
    # which BLAS CHOLMOD's factorisations ran on (None: no CHOLMOD in this solve)
    cholmod_blas = None
    if isinstance(linear, graph.SparseDirect) and linear.uses_cholmod("float64"):
        cholmod_blas = graph.blas_in_use()
    if kind != "bal" and args.init == "file" and not status.converged:
        # the slow convergence from odometry starts that the chordal start avoids (benchmarks/README.md (ad))
        print(
            f"jaxnls: {args.file}: not converged from the file's poses; the chordal start (--init chordal) often "
            "converges in a few iterations, sometimes to a lower minimum",
            file=sys.stderr,
        )
    if args.output and not status.converged and not args.write_unconverged:
        print(
            f"jaxnls: the solve did not converge ({status.name}); {args.output} was not written "
            "(--write-unconverged writes it anyway)",
            file=sys.stderr,
        )
    elif args.output:
        try:  # atomically: a failed write leaves whatever was at the output path untouched
            if isinstance(problem, BALProblem):  # kind == "bal"
                write_bal(args.output, updated_bal(problem, sol.params))
            else:
                solved = updated_pose_graph(problem, sol.params)
                if output_format == "g2o":  # (TORO's EQUIV records: said above)
                    write_g2o(args.output, dataclasses.replace(solved, equivalences=np.zeros((0, 2), np.int64)))
                else:  # (a FIX of anything but the first pose was refused above)
                    write_toro(args.output, dataclasses.replace(solved, fixed_ids=np.zeros(0, np.int64)))
        except OSError as err:
            print(f"jaxnls: cannot write {args.output}: {err.strerror or err}", file=sys.stderr)
            return 2
        if not status.converged:
            print(
                f"jaxnls: the solve did not converge ({status.name}); {args.output} holds where it stopped",
                file=sys.stderr,
            )
    if args.json:
        print(
            _json_line(
                {
                    "file": args.file,
                    "format": kind,
                    "initial_cost": float(sol.initial_cost),
                    "repaired_information": getattr(problem, "repaired_information", 0),
                    "initialization": args.init,
                    "final_cost": float(sol.cost),
                    "iterations": int(sol.num_steps),
                    "seconds": first,
                    "compile_seconds": compile_seconds,
                    "status": status.name,
                    "converged": bool(status.converged),
                    "solver": type(solver).__name__,
                    "linear_solver": type(linear).__name__,
                    "cholmod_blas": cholmod_blas,
                }
            )
        )
    else:
        print(description)
        print()
        print(sol.summary())
        print(f"Time: {first:.2f} s, of which compiling {compile_seconds:.2f} s (as JAX accounts it)")
        if cholmod_blas is not None:
            hint = " (3-4x slower than JAXNLS_BLAS=scipy, the default)" if cholmod_blas == "bundled" else ""
            print(f"Sparse Cholesky: CHOLMOD, BLAS: {cholmod_blas}{hint}")
    return 0 if status.converged else 1


class _CompileClock:
    """While active, the seconds JAX reports spending on compilation: tracing, lowering to MLIR, XLA's compile
    and reads from the persistent compilation cache (its ``jax.monitoring`` duration events; a trace nested in
    another is reported by both). The command runs its solve once and reports this share of it, instead of
    running the solve a second time to time it alone."""

    EVENTS = frozenset(
        {
            "/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration",
            "/jax/compilation_cache/cache_retrieval_time_sec",
        }
    )

    def __init__(self):
        self.seconds = 0.0

    def _listen(self, event: str, duration_secs: float, **kwargs: str | int) -> None:
        if event in self.EVENTS:
            self.seconds += duration_secs

    def __enter__(self) -> _CompileClock:
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._listen)


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
    sol = jaxnls.solve(
        problem.residual_fn, jnp.asarray(problem.starts[0]), problem.args, solver=solver, max_steps=MAX_STEPS
    )
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
    print(
        f"Each replica is the certified curve plus fresh Gaussian noise with NIST's residual standard\n"
        f"deviation ({problem.certified_residual_sd:.4g}); every replica is fitted from NIST's start 2 with "
        "its own\ndamping and stopping. The spread of the fitted parameters over the batch should match "
        "NIST's\ncertified standard deviations (which come from the linearised covariance).\n"
    )
    rng = np.random.default_rng(0)
    clean = problem.residual_fn.predict(problem.certified_values, problem.x, xp=np)
    y = clean[None, :] + problem.certified_residual_sd * rng.standard_normal((args.batch, problem.num_observations))
    params0 = np.broadcast_to(problem.starts[1], (args.batch, problem.num_params)).copy()

    def fit_batch() -> jaxnls.Solution:
        solution = jaxnls.solve(
            problem.residual_fn,
            jnp.asarray(params0),
            (problem.x, jnp.asarray(y)),
            solver=solver,
            max_steps=MAX_STEPS,
            batched=True,
            args_axes=(None, 0),
        )
        solution.params.block_until_ready()
        return solution

    t0 = time.perf_counter()
    batch = fit_batch()
    t1 = time.perf_counter()
    fit_batch()  # the same call again: its time without compilation
    t2 = time.perf_counter()
    print(batch.summary())
    print(
        f"Time: {t1 - t0:.2f} s with compilation, {t2 - t1:.3f} s for a second call "
        f"({1e6 * (t2 - t1) / args.batch:.0f} µs per fit) on {jax.devices()[0].platform.upper()}"
    )
    fitted = np.asarray(batch.params)[np.asarray(batch.converged)]
    print()
    if fitted.shape[0] < 2:
        print(f"({fitted.shape[0]} converged fits of {args.batch}: too few for a spread)")
        return 0
    print(f"{'':<6}{'batch mean':>18}{'certified':>18}{'batch std dev':>16}{'cert. std dev':>16}")
    for i, name in enumerate(problem.parameter_names):
        print(
            f"{name:<6}{fitted[:, i].mean():>18.8g}{problem.certified_values[i]:>18.8g}"
            f"{fitted[:, i].std(ddof=1):>16.4g}{problem.certified_std_devs[i]:>16.4g}"
        )
    print(f"({fitted.shape[0]} converged fits of {args.batch})")
    return 0


def main(argv=None) -> int:
    """Entry point of the ``jaxnls`` console script and ``python -m jaxnls``."""
    parser = argparse.ArgumentParser(prog="jaxnls", description="Batched nonlinear least squares in JAX.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fit a NIST problem shipped with jaxnls, then a batch of 1,024 fits")
    demo.add_argument("--batch", type=int, default=1024, help="size of the synthetic batch, at least 2 (default 1024)")
    solve = commands.add_parser(
        "solve",
        help="solve a NIST StRD .dat file, a g2o / TORO pose graph or a BAL file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SOLVE_EPILOG,
    )
    solve.add_argument("file", help="path to the problem file (format recognised from its records)")
    solve.add_argument("--start", type=int, choices=(1, 2), default=None, help="NIST starting point (default 1)")
    solve.add_argument(
        "--solver",
        choices=("lm", "gn", "dogleg"),
        default=None,
        help="Levenberg-Marquardt, Gauss-Newton or dogleg (default: lm for NIST files, all on QR, lm in "
        "MINPACK's trust-region form; dogleg for graphs)",
    )
    solve.add_argument(
        "--linear-solver",
        choices=("auto", "direct", "schur", "pcg"),
        default="auto",
        help="graphs: sparse direct (Cholesky by CHOLMOD, or LDLᵀ by QDLDL), the points eliminated and the reduced camera system factored "
        "densely (schur; BAL files), or block-Jacobi preconditioned CG; default auto: schur (a BAL "
        "file's points or a 2-D file's landmarks eliminated) when at most 2,500 unknowns remain, direct otherwise "
        "(jaxnls.graph.default_linear_solver)",
    )
    solve.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help=f"iteration limit (default {MAX_STEPS} for NIST files, {GRAPH_MAX_STEPS} for graphs)",
    )
    solve.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: for graphs initial_cost, final_cost = ½Σ‖r‖²_Σ, iterations, "
        "seconds (the solve call, compilation included) and compile_seconds (JAX's account of it), status; "
        "for NIST files also params and stderr (standard "
        "errors, in the file's parameter order)",
    )
    solve.add_argument(
        "--output",
        metavar="FILE",
        help="graphs: write the optimised problem atomically (a temporary file renamed over FILE when "
        "complete); never the input file itself; only when the solve converged unless --write-unconverged. "
        "Pose graphs are written in the format FILE's extension names (.g2o: g2o; .graph or .toro: TORO, "
        "refused where TORO cannot hold the graph: landmarks, FIX records other than the first pose; TORO's "
        "EQUIV records have no g2o form and are dropped, said on stderr), otherwise in the input's format",
    )
    solve.add_argument(
        "--write-unconverged",
        action="store_true",
        help="with --output: write the result even when the solve did not converge (exit status 1)",
    )
    solve.add_argument(
        "--init",
        choices=("file", "chordal"),
        default="file",
        help="pose graphs: start from the file's poses (default) or from the chordal initialisation "
        "(rotations from a linear relaxation, then positions by linear least squares; the anchored poses "
        "keep their values; jaxnls.graph.chordal_initialization). From an odometry start it can reach a "
        "far better minimum (torus3D: 12,118 instead of 29,950) in fewer iterations",
    )
    solve.add_argument("--verbose", action="store_true", help="print one line per iteration")
    solve.add_argument(
        "--repair-information",
        action="store_true",
        help="pose graphs: replace information matrices that are not positive definite by the "
        "nearest positive-definite ones (counted on stderr) instead of refusing the file",
    )
    for command in (demo, solve):
        command.add_argument(
            "--no-cache",
            action="store_true",
            help="do not use the persistent compilation cache (default: JAX's cache in "
            f"{_cache_folder()}, so a second run of the same kind of problem skips most "
            "compilation, and beside it, in programs/, graph solves' traced programs, so that it "
            "skips the tracing too; JAXNLS_CACHE_DIR moves it, JAXNLS_CACHE_DIR= turns it off)",
        )
    args = parser.parse_args(argv)
    if getattr(args, "batch", 2) < 2:
        parser.error(
            "--batch must be at least 2 (the demo compares the batch's spread with NIST's certified deviations)"
        )
    if getattr(args, "max_steps", None) is not None and not 1 <= args.max_steps <= MAX_STEPS_LIMIT:
        parser.error(f"--max-steps must be between 1 and {MAX_STEPS_LIMIT}")
    if getattr(args, "write_unconverged", False) and args.output is None:
        parser.error("--write-unconverged applies with --output")
    with _command_settings(use_cache=not args.no_cache) as folder:
        if args.command == "demo":
            return _demo_command(args)
        from ._programs import stored_programs

        # graph solves' traced programs beside XLA's compiled ones: a second run of the same kind and size of
        # problem skips the trace too (jaxnls._programs)
        with stored_programs(None if folder is None else os.path.join(folder, "programs")):
            return _solve_command(args)


def console() -> NoReturn:
    """The ``jaxnls`` console script and ``python -m jaxnls``: :func:`main` in a process of its own.

    That process never uses Flax, but where Flax is installed, jaxlie's dependency ``jax_dataclasses`` imports
    it to register its serialisation, which cost every pose-graph run 0.4 s and 7 MB of peak memory (sphere2500:
    327.6 → 320.6 MB; benchmarks/README.md (ah)); so Flax is marked absent here first, and glibc's allocator asked
    for one arena (:func:`_one_malloc_arena`). :func:`main` itself, which other programs may call, leaves their
    imports and their allocator alone."""
    if "flax" not in sys.modules:
        sys.modules["flax"] = None  # pyright: ignore[reportArgumentType]  # (None: ``import flax`` raises ImportError)
    _one_malloc_arena()
    sys.exit(main())


if __name__ == "__main__":
    console()
