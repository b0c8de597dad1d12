"""The Moré–Garbow–Hillstrom nonlinear least-squares test problems, in JAX.

References:
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing Unconstrained Optimization Software",
    ACM Trans. Math. Software 7(1):17-41, 1981 ("MGH 1981"; problem numbers below are the paper's).

    MINPACK-1 (Argonne, 1980) ships 18 of these problems as the test set of its least-squares
    drivers (``ssqfcn``/``ssqipt``); its numbering (1-18) is the one ``tests/data/minpack/lmddrv.ref``
    uses. The definitions here were written from the paper and checked against MINPACK's
    ``examples/ssqfcn.c`` and ``examples/ssqipt.c`` (cminpack 1.3.6): every starting residual norm
    must equal the ``initial l2 norm`` that MINPACK's ``lmddrv`` printed (see ``tests/test_mgh.py``).

Every residual is a pure function ``residual(x, args=None) -> r`` of ONE parameter vector ``x`` (n,),
defined once at module level (so ``jaxnls.solve`` compiles it once per shape). Problems whose
number of residuals m is a free choice get one function per m from a cached factory: m is a
trace-time constant, never data.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np

DATA_DIR = Path(__file__).parent / "data" / "minpack"

# --------------------------------------------------------------------------------------------------
# MINPACK's 18 problems (MINPACK number -> MGH 1981 number in each heading).
# --------------------------------------------------------------------------------------------------


# MINPACK 1 = MGH 32: linear function, full rank. f_i = x_i - 2/m Σx_j - 1 (i <= n), -2/m Σx_j - 1 (i > n).
@functools.cache
def linear_full_rank(m: int) -> Callable:
    def residual(x, args=None):
        n = x.shape[0]
        shift = 2.0 * jnp.sum(x) / m + 1.0
        padded = jnp.concatenate([x, jnp.zeros((m - n,), x.dtype)])
        return padded - shift

    return residual


# MINPACK 2 = MGH 33: linear function, rank 1. f_i = i Σ j x_j - 1.
@functools.cache
def linear_rank1(m: int) -> Callable:
    def residual(x, args=None):
        j = jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)
        i = jnp.arange(1, m + 1, dtype=x.dtype)
        return i * jnp.sum(j * x) - 1.0

    return residual


# MINPACK 3 = MGH 34: linear function, rank 1 with zero columns and rows.
# f_i = (i-1) Σ_{j=2}^{n-1} j x_j - 1 for i < m, f_m = -1 (so x_1, x_n and rows 1, m carry nothing).
@functools.cache
def linear_rank1_zero_columns_rows(m: int) -> Callable:
    def residual(x, args=None):
        n = x.shape[0]
        j = jnp.arange(1, n + 1, dtype=x.dtype)
        weight = jnp.where((j > 1) & (j < n), j, 0.0)
        i = jnp.arange(1, m + 1, dtype=x.dtype)
        r = (i - 1.0) * jnp.sum(weight * x) - 1.0
        return r.at[m - 1].set(-1.0)

    return residual


# MINPACK 4 = MGH 1: Rosenbrock. f = (10(x2 - x1²), 1 - x1).
def rosenbrock(x, args=None):
    return jnp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


# MINPACK 5 = MGH 7: helical valley. θ = arctan(x2/x1)/(2π), + 1/2 when x1 < 0 (±1/4 at x1 = 0).
def helical_valley(x, args=None):
    x1, x2, x3 = x[0], x[1], x[2]
    safe_x1 = jnp.where(x1 == 0, 1.0, x1)
    base = jnp.arctan(x2 / safe_x1) / (2.0 * math.pi)
    theta = jnp.where(x1 > 0, base, jnp.where(x1 < 0, base + 0.5, jnp.where(x2 < 0, -0.25, 0.25)))
    radius = jnp.sqrt(x1**2 + x2**2)
    return jnp.stack([10.0 * (x3 - 10.0 * theta), 10.0 * (radius - 1.0), x3])


# MINPACK 6 = MGH 13: Powell singular (singular Jacobian at the solution 0).
def powell_singular(x, args=None):
    return jnp.stack(
        [
            x[0] + 10.0 * x[1],
            math.sqrt(5.0) * (x[2] - x[3]),
            (x[1] - 2.0 * x[2]) ** 2,
            math.sqrt(10.0) * (x[0] - x[3]) ** 2,
        ]
    )


# MINPACK 7 = MGH 2: Freudenstein and Roth.
def freudenstein_roth(x, args=None):
    x1, x2 = x[0], x[1]
    return jnp.stack(
        [
            -13.0 + x1 + ((5.0 - x2) * x2 - 2.0) * x2,
            -29.0 + x1 + ((x2 + 1.0) * x2 - 14.0) * x2,
        ]
    )


# MINPACK 8 = MGH 8: Bard, m = 15. u_i = i, v_i = 16 - i, w_i = min(u_i, v_i).
_BARD_Y = np.array([0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39])


def bard(x, args=None):
    u = np.arange(1.0, 16.0)
    v = 16.0 - u
    w = np.minimum(u, v)
    return _BARD_Y - (x[0] + u / (x[1] * v + x[2] * w))


# MINPACK 9 = MGH 15: Kowalik and Osborne, m = 11.
_KOWALIK_U = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625])
_KOWALIK_Y = np.array([0.1957, 0.1947, 0.1735, 0.16, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246])


def kowalik_osborne(x, args=None):
    u = _KOWALIK_U
    return _KOWALIK_Y - x[0] * u * (u + x[1]) / (u * (u + x[2]) + x[3])


# MINPACK 10 = MGH 10: Meyer, m = 16, t_i = 45 + 5i.
_MEYER_Y = np.array(
    [
        34780.0,
        28610.0,
        23650.0,
        19630.0,
        16370.0,
        13720.0,
        11540.0,
        9744.0,
        8261.0,
        7030.0,
        6005.0,
        5147.0,
        4427.0,
        3820.0,
        3307.0,
        2872.0,
    ]
)


def meyer(x, args=None):
    t = 45.0 + 5.0 * np.arange(1.0, 17.0)
    return x[0] * jnp.exp(x[1] / (t + x[2])) - _MEYER_Y


# MINPACK 11 = MGH 20: Watson, m = 31, t_i = i/29.
# f_i = Σ_{j=2}^n (j-1) x_j t_i^{j-2} - (Σ_{j=1}^n x_j t_i^{j-1})² - 1 (i <= 29), f_30 = x1, f_31 = x2 - x1² - 1.
def watson(x, args=None):
    n = x.shape[0]
    t = np.arange(1.0, 30.0) / 29.0
    powers = t[:, None] ** np.arange(n)[None, :]  # t^(j-1), j = 1..n
    derivative = powers[:, :-1] * np.arange(1.0, n)[None, :]  # (j-1) t^(j-2), j = 2..n
    s1 = derivative @ x[1:]
    s2 = powers @ x
    return jnp.concatenate([s1 - s2**2 - 1.0, jnp.stack([x[0], x[1] - x[0] ** 2 - 1.0])])


# MINPACK 12 = MGH 12: Box three-dimensional, t_i = i/10.
@functools.cache
def box_3d(m: int) -> Callable:
    def residual(x, args=None):
        i = np.arange(1.0, m + 1.0)
        t = i / 10.0
        return jnp.exp(-t * x[0]) - jnp.exp(-t * x[1]) - x[2] * (np.exp(-t) - np.exp(-i))

    return residual


# MINPACK 13 = MGH 6: Jennrich and Sampson. f_i = 2 + 2i - (exp(i x1) + exp(i x2)).
@functools.cache
def jennrich_sampson(m: int) -> Callable:
    def residual(x, args=None):
        i = np.arange(1.0, m + 1.0)
        return 2.0 + 2.0 * i - (jnp.exp(i * x[0]) + jnp.exp(i * x[1]))

    return residual


# MINPACK 14 = MGH 16: Brown and Dennis, t_i = i/5.
@functools.cache
def brown_dennis(m: int) -> Callable:
    def residual(x, args=None):
        t = np.arange(1.0, m + 1.0) / 5.0
        a = x[0] + t * x[1] - np.exp(t)
        b = x[2] + x[3] * np.sin(t) - np.cos(t)
        return a**2 + b**2

    return residual


# MINPACK 15 = MGH 35: Chebyquad. f_i = (1/n) Σ_j T_i(2x_j - 1) - ∫_0^1 T_i(2s - 1) ds,
# with T_i the Chebyshev polynomials; the integral is -1/(i² - 1) for even i and 0 for odd i.
@functools.cache
def chebyquad(m: int) -> Callable:
    def residual(x, args=None):
        y = 2.0 * x - 1.0
        previous, current = jnp.ones_like(y), y
        rows = []
        for i in range(1, m + 1):
            integral = -1.0 / (i * i - 1.0) if i % 2 == 0 else 0.0
            rows.append(jnp.mean(current) - integral)
            previous, current = current, 2.0 * y * current - previous
        return jnp.stack(rows)

    return residual


# MINPACK 16 = MGH 27: Brown almost-linear, m = n. f_i = x_i + Σx_j - (n+1) (i < n), f_n = Πx_j - 1.
def brown_almost_linear(x, args=None):
    n = x.shape[0]
    linear = x + jnp.sum(x) - (n + 1.0)
    return linear.at[n - 1].set(jnp.prod(x) - 1.0)


# MINPACK 17 = MGH 17: Osborne 1, m = 33, t_i = 10(i-1).
_OSBORNE1_Y = np.array(
    [
        0.844,
        0.908,
        0.932,
        0.936,
        0.925,
        0.908,
        0.881,
        0.850,
        0.818,
        0.784,
        0.751,
        0.718,
        0.685,
        0.658,
        0.628,
        0.603,
        0.580,
        0.558,
        0.538,
        0.522,
        0.506,
        0.490,
        0.478,
        0.467,
        0.457,
        0.448,
        0.438,
        0.431,
        0.424,
        0.420,
        0.414,
        0.411,
        0.406,
    ]
)


def osborne1(x, args=None):
    t = 10.0 * np.arange(33.0)
    return _OSBORNE1_Y - (x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4]))


# MINPACK 18 = MGH 19: Osborne 2, m = 65, t_i = (i-1)/10.
_OSBORNE2_Y = np.array(
    [
        1.366,
        1.191,
        1.112,
        1.013,
        0.991,
        0.885,
        0.831,
        0.847,
        0.786,
        0.725,
        0.746,
        0.679,
        0.608,
        0.655,
        0.616,
        0.606,
        0.602,
        0.626,
        0.651,
        0.724,
        0.649,
        0.649,
        0.694,
        0.644,
        0.624,
        0.661,
        0.612,
        0.558,
        0.533,
        0.495,
        0.500,
        0.423,
        0.395,
        0.375,
        0.372,
        0.391,
        0.396,
        0.405,
        0.428,
        0.429,
        0.523,
        0.562,
        0.607,
        0.653,
        0.672,
        0.708,
        0.633,
        0.668,
        0.645,
        0.632,
        0.591,
        0.559,
        0.597,
        0.625,
        0.739,
        0.710,
        0.729,
        0.720,
        0.636,
        0.581,
        0.428,
        0.292,
        0.162,
        0.098,
        0.054,
    ]
)


def osborne2(x, args=None):
    t = np.arange(65.0) / 10.0
    model = (
        x[0] * jnp.exp(-t * x[4])
        + x[1] * jnp.exp(-x[5] * (t - x[8]) ** 2)
        + x[2] * jnp.exp(-x[6] * (t - x[9]) ** 2)
        + x[3] * jnp.exp(-x[7] * (t - x[10]) ** 2)
    )
    return _OSBORNE2_Y - model


@dataclasses.dataclass(frozen=True)
class MinpackProblem:
    """One of MINPACK's 18 least-squares test problems."""

    number: int  # MINPACK's (ssqfcn) number, 1-18
    mgh_number: int  # number in MGH 1981
    name: str
    residual_for_m: Callable[[int], Callable]  # m -> residual(x, args=None)
    standard_start: Callable[[int], np.ndarray]  # n -> MINPACK's starting point (factor 1)

    def residual(self, m: int) -> Callable:
        return self.residual_for_m(m)

    def start(self, n: int, factor: float = 1.0) -> np.ndarray:
        """MINPACK's ``ssqipt`` rule: ``factor * x0``; Watson's standard start is 0, so there every
        component becomes ``factor`` instead (for factor != 1)."""
        x0 = np.asarray(self.standard_start(n), dtype=np.float64)
        assert x0.shape == (n,)
        if factor == 1.0:
            return x0
        if self.number == 11:
            return np.full(n, float(factor))
        return factor * x0


def _fixed(fn):
    return lambda m: fn


def _const(*values):
    return lambda n: np.array(values, dtype=np.float64)


MINPACK_PROBLEMS: dict[int, MinpackProblem] = {
    p.number: p
    for p in [
        MinpackProblem(1, 32, "linear full rank", linear_full_rank, lambda n: np.ones(n)),
        MinpackProblem(2, 33, "linear rank 1", linear_rank1, lambda n: np.ones(n)),
        MinpackProblem(
            3, 34, "linear rank 1, zero columns and rows", linear_rank1_zero_columns_rows, lambda n: np.ones(n)
        ),
        MinpackProblem(4, 1, "Rosenbrock", _fixed(rosenbrock), _const(-1.2, 1.0)),
        MinpackProblem(5, 7, "helical valley", _fixed(helical_valley), _const(-1.0, 0.0, 0.0)),
        MinpackProblem(6, 13, "Powell singular", _fixed(powell_singular), _const(3.0, -1.0, 0.0, 1.0)),
        MinpackProblem(7, 2, "Freudenstein and Roth", _fixed(freudenstein_roth), _const(0.5, -2.0)),
        MinpackProblem(8, 8, "Bard", _fixed(bard), _const(1.0, 1.0, 1.0)),
        MinpackProblem(9, 15, "Kowalik and Osborne", _fixed(kowalik_osborne), _const(0.25, 0.39, 0.415, 0.39)),
        MinpackProblem(10, 10, "Meyer", _fixed(meyer), _const(0.02, 4000.0, 250.0)),
        MinpackProblem(11, 20, "Watson", _fixed(watson), lambda n: np.zeros(n)),
        MinpackProblem(12, 12, "Box 3-D", box_3d, _const(0.0, 10.0, 20.0)),
        MinpackProblem(13, 6, "Jennrich and Sampson", jennrich_sampson, _const(0.3, 0.4)),
        MinpackProblem(14, 16, "Brown and Dennis", brown_dennis, _const(25.0, 5.0, -5.0, -1.0)),
        MinpackProblem(15, 35, "Chebyquad", chebyquad, lambda n: np.arange(1.0, n + 1.0) / (n + 1.0)),
        MinpackProblem(16, 27, "Brown almost-linear", _fixed(brown_almost_linear), lambda n: np.full(n, 0.5)),
        MinpackProblem(17, 17, "Osborne 1", _fixed(osborne1), _const(0.5, 1.5, -1.0, 0.01, 0.02)),
        MinpackProblem(
            18, 19, "Osborne 2", _fixed(osborne2), _const(1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5)
        ),
    ]
}

# --------------------------------------------------------------------------------------------------
# MGH 1981 problems that MINPACK's least-squares set lacks (zero-residual, closed-form minima).
# --------------------------------------------------------------------------------------------------


# MGH 4: Brown badly scaled, n = 2, m = 3. f = 0 at (1e6, 2e-6).
def brown_badly_scaled(x, args=None):
    return jnp.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])


# MGH 5: Beale, n = 2, m = 3. f_i = y_i - x1(1 - x2^i), y = (1.5, 2.25, 2.625). f = 0 at (3, 0.5).
def beale(x, args=None):
    i = np.arange(1.0, 4.0)
    return np.array([1.5, 2.25, 2.625]) - x[0] * (1.0 - x[1] ** i)


# MGH 14: Wood, n = 4, m = 6. f = 0 at (1, 1, 1, 1).
def wood(x, args=None):
    return jnp.stack(
        [
            10.0 * (x[1] - x[0] ** 2),
            1.0 - x[0],
            math.sqrt(90.0) * (x[3] - x[2] ** 2),
            1.0 - x[2],
            math.sqrt(10.0) * (x[1] + x[3] - 2.0),
            (x[1] - x[3]) / math.sqrt(10.0),
        ]
    )


# MGH 18: Biggs EXP6, n = 6, m = 13, t_i = i/10, y_i = e^{-t_i} - 5e^{-10 t_i} + 3e^{-4 t_i}.
# f = 0 at (1, 10, 1, 5, 4, 3) (and at the other assignments of the three exponentials to the model's terms).
def biggs_exp6(x, args=None):
    t = np.arange(1.0, 14.0) / 10.0
    y = np.exp(-t) - 5.0 * np.exp(-10.0 * t) + 3.0 * np.exp(-4.0 * t)
    return x[2] * jnp.exp(-t * x[0]) - x[3] * jnp.exp(-t * x[1]) + x[5] * jnp.exp(-t * x[4]) - y


@dataclasses.dataclass(frozen=True)
class ExtraProblem:
    """An MGH 1981 problem with a known zero-residual minimiser."""

    mgh_number: int
    name: str
    residual: Callable
    start: np.ndarray  # MGH 1981's standard starting point
    minimiser: np.ndarray  # a minimiser with f = 0 (see MGH 1981)
    num_residuals: int


EXTRA_PROBLEMS: dict[str, ExtraProblem] = {
    p.name: p
    for p in [
        ExtraProblem(4, "Brown badly scaled", brown_badly_scaled, np.array([1.0, 1.0]), np.array([1e6, 2e-6]), 3),
        ExtraProblem(5, "Beale", beale, np.array([1.0, 1.0]), np.array([3.0, 0.5]), 3),
        ExtraProblem(14, "Wood", wood, np.array([-3.0, -1.0, -3.0, -1.0]), np.ones(4), 6),
        ExtraProblem(
            18,
            "Biggs EXP6",
            biggs_exp6,
            np.array([1.0, 2.0, 1.0, 1.0, 1.0, 1.0]),
            np.array([1.0, 10.0, 1.0, 5.0, 4.0, 3.0]),
            13,
        ),
    ]
}

# --------------------------------------------------------------------------------------------------
# MINPACK's reference results: lmddrv.ref (output of its lmder1 driver) and ssq.data (its input).
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MinpackRun:
    """One run of MINPACK's ``lmddrv`` (lmder1 with tol = sqrt(machine eps))."""

    problem: int
    n: int
    m: int
    factor: float  # starting point = ssqipt's standard start scaled by this (1, 10, 100, ...)
    initial_norm: float  # ‖f(x0)‖₂
    final_norm: float  # ‖f(x_final)‖₂
    nfev: int
    njev: int
    info: int  # lmder's exit parameter
    x: tuple[float, ...]  # final approximate solution (7 significant digits)

    @property
    def id(self) -> str:
        return f"p{self.problem:02d}-n{self.n}-m{self.m}-x{int(self.factor)}"


def _number(text: str) -> float:
    return float(text.replace("D", "E").replace("d", "e"))


_RUN_HEADER = re.compile(r"^\s*problem\s+(\d+)\s+dimensions\s+(\d+)\s+(\d+)\s*$")
_FIELDS = {
    "initial l2 norm of the residuals": "initial_norm",
    "final l2 norm of the residuals": "final_norm",
    "number of function evaluations": "nfev",
    "number of jacobian evaluations": "njev",
    "exit parameter": "info",
}


def parse_lmddrv_ref(path: Path | str = DATA_DIR / "lmddrv.ref") -> list[MinpackRun]:
    """The per-run blocks of MINPACK's lmddrv reference output, in order.

    The starting-point factor is not printed: the driver runs each (problem, n, m) line of
    ``ssq.data`` ``ntries`` times with factor 1, 10, 100, ..., so it is recovered from the run's
    position among consecutive runs with the same (problem, n, m).
    """
    runs: list[MinpackRun] = []
    current: dict | None = None

    def finish():
        if current is not None:
            runs.append(MinpackRun(x=tuple(current.pop("x")), **current))

    lines = Path(path).read_text().splitlines()
    reading_x = False
    for line in lines:
        if line.lstrip().startswith("1summary") or line.startswith("\f"):
            break
        header = _RUN_HEADER.match(line)
        if header:
            finish()
            problem, n, m = (int(g) for g in header.groups())
            previous = runs[-1] if runs else None
            same = previous is not None and (previous.problem, previous.n, previous.m) == (problem, n, m)
            factor = previous.factor * 10.0 if same else 1.0
            current = dict(problem=problem, n=n, m=m, factor=factor, x=[])
            reading_x = False
            continue
        if current is None:
            continue
        stripped = line.strip()
        if stripped == "final approximate solution":
            reading_x = True
            continue
        for label, field in _FIELDS.items():
            if stripped.startswith(label):
                value = stripped[len(label) :].split()[0]
                current[field] = int(value) if field in ("nfev", "njev", "info") else _number(value)
                break
        else:
            if reading_x and stripped:
                current["x"].extend(_number(v) for v in stripped.split())
    finish()
    for run in runs:
        if len(run.x) != run.n:
            raise ValueError(f"lmddrv.ref: run {run.id} lists {len(run.x)} final parameters, expected {run.n}")
    return runs


def parse_lmddrv_summary(
    path: Path | str = DATA_DIR / "lmddrv.ref",
) -> list[tuple[int, int, int, int, int, int, float]]:
    """The summary table at the end of lmddrv.ref: (nprob, n, m, nfev, njev, info, final norm) per run."""
    rows = []
    in_table = False
    for line in Path(path).read_text().splitlines():
        if line.lstrip().startswith("nprob"):
            in_table = True
            continue
        fields = line.split()
        if in_table and len(fields) == 7:
            rows.append((*(int(v) for v in fields[:6]), _number(fields[6])))
    return rows


def parse_ssq_data(path: Path | str = DATA_DIR / "ssq.data") -> list[tuple[int, int, int, int]]:
    """(problem, n, m, ntries) per line of the driver's input, up to the terminating zero line."""
    rows = []
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if len(fields) != 4:
            continue
        row = tuple(int(v) for v in fields)
        if row[0] <= 0:
            break
        rows.append(row)
    return rows
