r"""Reader for the NIST StRD nonlinear-regression datasets (``*.dat``).

The NIST Statistical Reference Datasets (https://www.itl.nist.gov/div898/strd/) for nonlinear least
squares are 27 small text files, each with a model, two starting points, certified parameter values
(computed by NIST in 128-bit arithmetic) and the data. :func:`read_nist` parses one file into a
:class:`NistProblem` whose :attr:`~NistProblem.residual_fn` plugs straight into :func:`jaxnls.solve`::

    problem = read_nist("Misra1a.dat")
    sol = jaxnls.solve(problem.residual_fn, problem.starts[0], problem.args)
    problem.lre(sol.params)          # digits of agreement with the certified values

The file is validated strictly; anything malformed raises :class:`NistFormatError` naming the file
and line. The model is read from the file's ``Model:`` section (NIST writes ``[ ]`` for brackets and
``**`` for powers) and translated into a Python :mod:`ast` that is checked against a whitelist (the
parameters ``b1..bk``, the predictors named in the data header, ``pi`` and constants the section
defines, and the functions ``exp``, ``log``, ``sqrt``, ``sin``, ``cos``, ``arctan``); the tree is then
interpreted node by node with ``jax.numpy`` (or ``numpy``). No text is ever passed to ``eval``.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import FileFormatError, ascii_lines

if TYPE_CHECKING:
    from jaxtyping import Array, Float
    from numpy.typing import ArrayLike

__all__ = ["NistFormatError", "NistModel", "NistProblem", "log_relative_error", "parse_nist", "read_nist"]


class NistFormatError(FileFormatError):
    """A NIST StRD file that does not follow the format. ``str(err)`` is ``"FILE, line N: what"``.

    Args:
        path: the file's name as shown in the message (``"<string>"`` for parsed text).
        line: the 1-based number of the offending line.
        message: what is wrong, kept as ``reason``.
    """


# --------------------------------------------------------------------------------------------------
# Numbers

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eEdD][+-]?\d+)?")
_NONFINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


def _number(token: str, path: str, line: int, what: str) -> float:
    if _NONFINITE.fullmatch(token):
        raise NistFormatError(path, line, f"non-finite number {token!r} in {what}")
    if not _NUMBER.fullmatch(token):
        raise NistFormatError(path, line, f"non-numeric token {token!r} in {what}")
    value = float(token.replace("d", "e").replace("D", "e"))
    if not math.isfinite(value):
        raise NistFormatError(path, line, f"non-finite number {token!r} (overflows float64) in {what}")
    return value


def _integer(token: str, path: str, line: int, what: str) -> int:
    if not re.fullmatch(r"\d{1,9}", token):
        raise NistFormatError(path, line, f"expected a whole number (at most 9 digits) for {what}, found {token!r}")
    return int(token)


# --------------------------------------------------------------------------------------------------
# The model: NIST text -> checked AST -> small interpreter

#: Functions a model may call, by NIST name; each maps to the attribute of the array module used.
FUNCTIONS = {"exp": "exp", "log": "log", "sqrt": "sqrt", "sin": "sin", "cos": "cos", "arctan": "arctan"}
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_ALLOWED_CHARS = re.compile(r"[A-Za-z0-9_.+\-*/()\[\] \t\n]*")


class NistModel:
    """A model expression from a NIST file, checked and compiled to a tiny tree of operations.

    ``NistModel`` is callable as a jaxnls residual function: ``model(params, (x, y))`` returns
    ``lhs(y) - rhs(params, x)`` (``lhs`` is ``y`` itself except in Nelson, whose model is for ``log[y]``).
    ``x`` has shape ``(n,)`` with one predictor or ``(n, p)`` with several (columns in the order of
    :attr:`predictors`). Two models with the same text and names compare equal and hash alike, so
    re-reading a file reuses jaxnls' compiled solve.

    Built by :func:`parse_nist` / :func:`read_nist`, which check the expressions and compile the trees.

    Args:
        lhs_text: the left-hand side as written (``"y"``, or ``"log[y]"`` for Nelson).
        rhs_text: the right-hand side as written, without ``+ e``.
        parameters: the parameter names in order (``b1``, ..., ``bk``).
        predictors: the predictor names in the order of the columns of ``x``.
        response: the response name (``y``).
        constants: the named constants the expressions may use and their values: ``pi`` and those the
            file's ``Model:`` section defines.
        lhs_tree: the compiled left-hand side.
        rhs_tree: the compiled right-hand side.
    """

    def __init__(
        self,
        lhs_text: str,
        rhs_text: str,
        parameters: Sequence[str],
        predictors: Sequence[str],
        response: str,
        constants: dict[str, float],
        lhs_tree: tuple,
        rhs_tree: tuple,
    ):
        self.lhs_text = lhs_text
        self.rhs_text = rhs_text
        self.parameters = tuple(parameters)
        self.predictors = tuple(predictors)
        self.response = response
        self.constants = dict(constants)
        self._lhs = lhs_tree
        self._rhs = rhs_tree
        self._key = (
            lhs_text,
            rhs_text,
            self.parameters,
            self.predictors,
            response,
            tuple(sorted(self.constants.items())),
        )

    def __eq__(self, other):
        return isinstance(other, NistModel) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        return f"NistModel({self.lhs_text} = {self.rhs_text})"

    def predict(
        self,
        params: Float[Array | np.ndarray, " k"],
        x: Float[Array | np.ndarray, "n ..."],
        xp: ModuleType | None = None,
    ) -> Float[Array | np.ndarray, " n"]:
        """The right-hand side ``f(b, x)`` (for Nelson: the model of ``log[y]``)."""
        xp = _array_module(xp)
        names = {name: params[i] for i, name in enumerate(self.parameters)}
        if len(self.predictors) == 1:
            names[self.predictors[0]] = x
        else:
            for j, name in enumerate(self.predictors):
                names[name] = x[..., j]
        return _evaluate(self._rhs, names, self.constants, xp)

    def transform_response(
        self, y: Float[ArrayLike, " n"], xp: ModuleType | None = None
    ) -> Float[Array | np.ndarray, " n"]:
        """The left-hand side ``g(y)`` the model is fitted to (``y`` itself, or ``log[y]``)."""
        return _evaluate(self._lhs, {self.response: y}, self.constants, _array_module(xp))

    def residuals(
        self,
        params: Float[Array | np.ndarray, " k"],
        x: Float[Array | np.ndarray, "n ..."],
        y: Float[ArrayLike, " n"],
        xp: ModuleType | None = None,
    ) -> Float[Array | np.ndarray, " n"]:
        """``g(y) - f(b, x)``, the NIST residuals."""
        return self.transform_response(y, xp) - self.predict(params, x, xp)

    def __call__(
        self,
        params: Float[Array | np.ndarray, " k"],
        args: tuple[Float[Array | np.ndarray, "n ..."], Float[ArrayLike, " n"]],
    ) -> Float[Array | np.ndarray, " n"]:
        x, y = args
        return self.residuals(params, x, y)


def _array_module(xp: ModuleType | None) -> ModuleType:
    if xp is None:
        import jax.numpy as jnp

        return jnp
    return xp


def _evaluate(tree: tuple, names: dict, constants: dict, xp) -> Any:
    kind = tree[0]
    if kind == "const":
        return tree[1]
    if kind == "name":
        name = tree[1]
        if name in names:
            return names[name]
        return constants[name]
    if kind == "neg":
        return -_evaluate(tree[1], names, constants, xp)
    if kind == "call":
        return getattr(xp, FUNCTIONS[tree[1]])(_evaluate(tree[2], names, constants, xp))
    a = _evaluate(tree[1], names, constants, xp)
    b = _evaluate(tree[2], names, constants, xp)
    if kind == "+":
        return a + b
    if kind == "-":
        return a - b
    if kind == "*":
        return a * b
    if kind == "/":
        return a / b
    return a**b


def _compile(text: str, first_line: int, allowed: set[str], path: str, what: str) -> tuple[tuple, set[str]]:
    """Translate NIST expression text (lines starting at ``first_line``) into an operation tree.

    Returns the tree and the set of names it uses. ``allowed`` are the variable names it may use.
    """
    for offset, line_text in enumerate(text.split("\n")):
        bad = _ALLOWED_CHARS.fullmatch(line_text)
        if bad is None:
            char = next(c for c in line_text if not _ALLOWED_CHARS.fullmatch(c))
            raise NistFormatError(path, first_line + offset, f"unexpected character {char!r} in the {what}")
    python = text.replace("[", "(").replace("]", ")")
    if not python.strip():
        raise NistFormatError(path, first_line, f"the {what} is empty")
    try:
        # Wrapped in parentheses so that an expression continued on the next line parses (implicit
        # line joining). ast.parse only builds the tree; nothing is executed.
        tree = ast.parse("(" + python + "\n)", mode="eval")
    except SyntaxError as err:
        line = first_line + max((err.lineno or 1) - 1, 0)
        line = min(line, first_line + python.count("\n"))
        raise NistFormatError(path, line, f"cannot parse the {what}: {err.msg}") from None
    except (ValueError, RecursionError, MemoryError) as err:
        raise NistFormatError(path, first_line, f"cannot parse the {what}: {err}") from None
    used: set[str] = set()

    def line_of(node) -> int:
        return first_line + max(getattr(node, "lineno", 1) - 1, 0)

    def walk(node, depth=0) -> tuple:
        if depth > 200:
            raise NistFormatError(path, line_of(node), f"the {what} is nested too deeply")
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise NistFormatError(path, line_of(node), f"unsupported constant {str(value)[:20]!r} in the {what}")
            if isinstance(value, int) and abs(value) > 2**31:
                value = float(value) if value.bit_length() < 1024 else math.inf
            if not math.isfinite(value):
                raise NistFormatError(path, line_of(node), f"non-finite number in the {what}")
            # Whole numbers stay Python ints so that x**2 is an exact integer power.
            return ("const", value)
        if isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise NistFormatError(
                    path, line_of(node), f"function {node.id!r} used without an argument in the {what}"
                )
            if node.id not in allowed:
                raise NistFormatError(
                    path,
                    line_of(node),
                    f"unknown name {node.id!r} in the {what} (allowed: {', '.join(sorted(allowed))}; "
                    f"functions: {', '.join(FUNCTIONS)})",
                )
            used.add(node.id)
            return ("name", node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = walk(node.operand, depth + 1)
            if isinstance(node.op, ast.UAdd):
                return operand
            if operand[0] == "const":  # fold -2 so that x**(-2) stays an integer power
                return ("const", -operand[1])
            return ("neg", operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return (_BINARY[type(node.op)], walk(node.left, depth + 1), walk(node.right, depth + 1))
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = node.func.id if isinstance(node.func, ast.Name) else ast.dump(node.func)[:40]
                raise NistFormatError(
                    path,
                    line_of(node),
                    f"{name!r} is not a known function in the {what} (known: {', '.join(FUNCTIONS)})",
                )
            if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
                raise NistFormatError(path, line_of(node), f"{node.func.id} takes exactly one argument in the {what}")
            return ("call", node.func.id, walk(node.args[0], depth + 1))
        raise NistFormatError(path, line_of(node), f"unsupported syntax ({type(node).__name__}) in the {what}")

    return walk(tree.body), used


# --------------------------------------------------------------------------------------------------
# The problem


@dataclasses.dataclass(frozen=True, eq=False)
class NistProblem:
    """One NIST StRD nonlinear-regression problem. Arrays are read-only float64 NumPy arrays.

    Attributes:
        name: dataset name (``"Misra1a"``).
        difficulty: ``"Lower"``, ``"Average"`` or ``"Higher"``.
        model_class: NIST's label, e.g. ``"Exponential Class"``.
        model: the model expression as written in the file (without ``+ e``), lines joined by a space.
        parameter_names: ``("b1", ..., "bk")``.
        starts: ``(2, k)`` starting values, row ``i`` is NIST's "Start i+1".
        certified_values: ``(k,)`` certified parameter estimates.
        certified_std_devs: ``(k,)`` their certified standard deviations.
        certified_rss: certified residual sum of squares.
        certified_residual_sd: certified residual standard deviation.
        degrees_of_freedom: as stated in the file.
        predictor_names: the predictors' column names from the data header (``("x",)`` or ``("x1", "x2")``).
        response_name: the response's column name (``y``).
        x: ``(n,)`` predictor values, or ``(n, p)`` with several predictors.
        y: ``(n,)`` responses.
        residual_fn: ``residual_fn(params, args)`` for :func:`jaxnls.solve`, with ``params`` the
            ``(k,)`` parameter vector and ``args = (x, y)`` (see :attr:`args`).
        path: the file it was read from.
    """

    name: str
    difficulty: str
    model_class: str
    model: str
    parameter_names: tuple[str, ...]
    starts: Float[np.ndarray, "2 k"]
    certified_values: Float[np.ndarray, " k"]
    certified_std_devs: Float[np.ndarray, " k"]
    certified_rss: float
    certified_residual_sd: float
    degrees_of_freedom: int
    predictor_names: tuple[str, ...]
    response_name: str
    x: Float[np.ndarray, "n ..."]
    y: Float[np.ndarray, " n"]
    residual_fn: NistModel
    path: str

    @property
    def num_params(self) -> int:
        """k, the number of parameters."""
        return len(self.parameter_names)

    @property
    def num_observations(self) -> int:
        """n, the number of observations."""
        return int(self.y.shape[0])

    @property
    def args(self) -> tuple[Float[np.ndarray, "n ..."], Float[np.ndarray, " n"]]:
        """``(x, y)``, the ``args`` of :attr:`residual_fn`."""
        return (self.x, self.y)

    def rss(self, params: Float[Array | np.ndarray, " k"], xp: ModuleType = np) -> float | Any:
        """Residual sum of squares at ``params`` (NumPy float64 by default; ``xp=jax.numpy`` to trace)."""
        r = self.residual_fn.residuals(params, self.x, self.y, xp=xp)
        return xp.sum(r * r)

    def lre(self, params: Float[ArrayLike, " k"], cap: float = 15.0) -> Float[np.ndarray, " k"]:
        """Log relative error of each parameter against the certified values (see :func:`log_relative_error`)."""
        return log_relative_error(params, self.certified_values, cap)


def log_relative_error(estimate: ArrayLike, certified: ArrayLike, cap: float = 15.0) -> np.ndarray:
    r"""NIST's LRE, :math:`-\log_{10}(|q - c| / |c|)`: the number of agreeing significant digits.

    Absolute error where ``c == 0``; ``cap`` for an exact match; 0 for a non-finite estimate or one with
    no agreeing digit. The certified values carry 11 significant digits, so about 10-11 is the most that
    can be measured.

    Args:
        estimate: the estimates :math:`q`, any shape broadcasting with ``certified``.
        certified: the certified values :math:`c`.
        cap: the LRE of an exact match and the largest value returned (default 15).

    Returns:
        The LRE of each entry, float64 in ``[0, cap]``.
    """
    q = np.asarray(estimate, dtype=np.float64)
    c = np.asarray(certified, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(q - c) / np.where(c == 0, 1.0, np.abs(c))
        lre = np.where(err == 0, cap, -np.log10(err))
    lre = np.where(np.isfinite(q) & np.isfinite(lre), lre, 0.0)
    return np.clip(lre, 0.0, cap) + 0.0  # + 0.0 turns -0.0 into 0.0


# --------------------------------------------------------------------------------------------------
# Parsing


_DECLARATION = {
    "Starting Values": re.compile(r"Starting\s+Values\s*\(\s*lines\s+(\S+)\s+to\s+(\S+?)\s*\)", re.IGNORECASE),
    "Certified Values": re.compile(r"Certified\s+Values\s*\(\s*lines\s+(\S+)\s+to\s+(\S+?)\s*\)", re.IGNORECASE),
    "Data": re.compile(r"Data\s*\(\s*lines\s+(\S+)\s+to\s+(\S+?)\s*\)", re.IGNORECASE),
}
_SUMMARY = {
    "Residual Sum of Squares": "rss",
    "Residual Standard Deviation": "rsd",
    "Degrees of Freedom": "dof",
    "Number of Observations": "nobs",
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_nist(path: str | os.PathLike) -> NistProblem:
    """Read and validate a NIST StRD nonlinear-regression ``.dat`` file.

    Args:
        path: the file.

    Returns:
        The :class:`NistProblem`.

    Raises:
        NistFormatError: the file does not follow the StRD layout (the message names the line).
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    return parse_nist(raw, path)


def parse_nist(content: bytes | str, path: str = "<string>") -> NistProblem:
    """:func:`read_nist` on the file's contents (``path`` is only used in error messages).

    Args:
        content: the file's text or bytes (plain ASCII).
        path: the name error messages give the file.

    Returns:
        The :class:`NistProblem`.

    Raises:
        NistFormatError: the content does not follow the StRD layout (the message names the line).
    """
    if isinstance(content, str):
        content = content.encode("utf-8", errors="surrogateescape")
    return _Parser(path, ascii_lines(content, path, NistFormatError, "a NIST StRD file")).parse()


class _Parser:
    def __init__(self, path: str, lines: list[str]):
        self.path = path
        self.lines = lines

    def error(self, line: int, message: str):
        return NistFormatError(self.path, line, message)

    def line(self, number: int) -> str:
        return self.lines[number - 1] if 1 <= number <= len(self.lines) else ""

    def find(self, pattern: re.Pattern, start: int = 1, stop: int | None = None):
        """First (line number, match) with ``pattern.search`` in lines [start, stop)."""
        stop = len(self.lines) + 1 if stop is None else stop
        for number in range(start, min(stop, len(self.lines) + 1)):
            match = pattern.search(self.lines[number - 1])
            if match:
                return number, match
        return None, None

    # ------------------------------------------------------------------
    def parse(self) -> NistProblem:
        if not self.lines:
            raise self.error(1, "the file is empty")
        name = self._name()
        blocks = self._declarations()
        first_block = min(a for a, _ in blocks.values())
        num_obs, obs_line, difficulty = self._data_description(first_block)
        _, model_class, k, k_line = self._model_header(first_block)
        params = tuple(f"b{i}" for i in range(1, k + 1))
        columns, response, predictors = self._data_header(blocks["Data"])
        starts, cert, sd, summary = self._parameter_blocks(blocks, params)
        x, y = self._data(blocks["Data"], columns, response, predictors, num_obs, obs_line)
        if summary["nobs"][0] != num_obs:
            raise self.error(
                summary["nobs"][1],
                f"Number of Observations is {summary['nobs'][0]} but the header "
                f"(line {obs_line}) says {num_obs} Observations",
            )
        model_text, model = self._model(k_line + 1, first_block, params, predictors, response)
        return NistProblem(
            name=name,
            difficulty=difficulty,
            model_class=model_class,
            model=model_text,
            parameter_names=params,
            starts=_readonly(starts),
            certified_values=_readonly(cert),
            certified_std_devs=_readonly(sd),
            certified_rss=summary["rss"][0],
            certified_residual_sd=summary["rsd"][0],
            degrees_of_freedom=summary["dof"][0],
            predictor_names=predictors,
            response_name=response,
            x=_readonly(x),
            y=_readonly(y),
            residual_fn=model,
            path=self.path,
        )

    # ------------------------------------------------------------------
    def _name(self) -> str:
        number, match = self.find(re.compile(r"^\s*Dataset\s+Name:\s*(\S*)"))
        if number is None or match is None:
            raise self.error(min(2, len(self.lines)), "missing section: no 'Dataset Name:' line")
        if not _IDENT.fullmatch(match.group(1)):
            raise self.error(number, f"invalid dataset name {match.group(1)!r}")
        return match.group(1)

    def _declarations(self) -> dict[str, tuple[int, int]]:
        format_line, _ = self.find(re.compile(r"^\s*File\s+Format:"))
        where = format_line or 1
        blocks = {}
        for label, pattern in _DECLARATION.items():
            number, match = self.find(pattern)
            if number is None or match is None:
                raise self.error(
                    where, f"missing section: no '{label} (lines A to B)' declaration in the File Format header"
                )
            first = _integer(match.group(1), self.path, number, f"the first line of the {label} block")
            last = _integer(match.group(2), self.path, number, f"the last line of the {label} block")
            if not number < first <= last:
                raise self.error(
                    number,
                    f"the {label} block is declared as lines {first} to {last}, which is not "
                    "a valid range after the header",
                )
            blocks[label] = (first, last)
        return blocks

    def _data_description(self, stop: int) -> tuple[int, int, str]:
        number, match = self.find(re.compile(r"^\s*(?:Data:)?\s*(\S+)\s+Observations\s*$"), 1, stop)
        if number is None or match is None:
            raise self.error(1, "missing section: no 'N Observations' line in the Data description")
        num_obs = _integer(match.group(1), self.path, number, "the number of observations")
        if num_obs == 0:
            raise self.error(number, "zero observations")
        level_line, level = self.find(re.compile(r"\b(Lower|Average|Higher)\s+Level\s+of\s+Difficulty"), 1, stop)
        if level_line is None or level is None:
            raise self.error(number, "missing section: no '... Level of Difficulty' line in the Data description")
        return num_obs, number, level.group(1)

    def _model_header(self, stop: int) -> tuple[int, str, int, int]:
        model_line, match = self.find(re.compile(r"^\s*Model:\s*(.*?)\s*$"), 1, stop)
        if model_line is None or match is None:
            raise self.error(1, f"missing section: no 'Model:' section before line {stop}")
        model_class = match.group(1)
        k_line, k_match = self.find(re.compile(r"^\s*(\S+)\s+Parameters?\s*\((.*)\)\s*$"), model_line, stop)
        if k_line is None or k_match is None:
            raise self.error(model_line, "missing the 'k Parameters (b1 to bk)' line in the Model section")
        k = _integer(k_match.group(1), self.path, k_line, "the number of parameters")
        if k > 1000:
            raise self.error(k_line, f"implausible number of parameters {k}")
        names = k_match.group(2).split()
        expected = {1: [["b1"]], 2: [["b1", "and", "b2"], ["b1", "to", "b2"]]}.get(k, [["b1", "to", f"b{k}"]])
        if k == 0 or names not in expected:
            raise self.error(
                k_line,
                f"expected '({' '.join(expected[0]) if k else 'b1 to bk'})' after "
                f"{k} Parameters, found ({k_match.group(2)})",
            )
        return model_line, model_class, k, k_line

    def _data_header(self, block: tuple[int, int]) -> tuple[list[str], str, tuple[str, ...]]:
        number = block[0] - 1
        text = self.line(number)
        match = re.fullmatch(r"\s*Data:\s*(.*?)\s*", text)
        if not match:
            raise self.error(
                number,
                "missing section: expected the data column header 'Data:  y  x' on the line "
                f"before the Data block (line {block[0]})",
            )
        columns = match.group(1).split()
        for col in columns:
            if not _IDENT.fullmatch(col):
                raise self.error(number, f"invalid column name {col!r} in the data header")
        if len(set(columns)) != len(columns):
            raise self.error(number, f"repeated column name in the data header {columns}")
        responses = [c for c in columns if c.startswith("y")]
        predictors = tuple(c for c in columns if c.startswith("x"))
        if len(responses) != 1 or not predictors or len(responses) + len(predictors) != len(columns):
            raise self.error(
                number,
                f"the data header must name one response (y) and the predictors (x or x1, "
                f"x2, ...), found {' '.join(columns) or 'nothing'}",
            )
        return columns, responses[0], predictors

    def _parameter_blocks(self, blocks, params):
        k = len(params)
        s_first, s_last = blocks["Starting Values"]
        c_first, c_last = blocks["Certified Values"]
        if s_last - s_first + 1 != k:
            raise self.error(
                self._declaration_line("Starting Values"),
                f"the Starting Values block (lines {s_first} to {s_last}) has "
                f"{s_last - s_first + 1} lines but the model has {k} parameters",
            )
        if c_first != s_first:
            raise self.error(
                self._declaration_line("Certified Values"),
                "the Certified Values block must start on the same line as the Starting Values block "
                f"({s_first}), found {c_first}",
            )
        if c_last < s_last + 4:
            raise self.error(
                self._declaration_line("Certified Values"),
                f"the Certified Values block (lines {c_first} to {c_last}) is too short for {k} "
                "parameters and the four summary lines",
            )
        starts = np.empty((2, k))
        cert = np.empty(k)
        sd = np.empty(k)
        for i, name in enumerate(params):
            number = s_first + i
            self._require_line(number, "Starting/Certified Values")
            tokens = self.line(number).split()
            if len(tokens) < 2 or tokens[0] != name or tokens[1] != "=":
                raise self.error(
                    number, f"expected '{name} = start1 start2 certified std_dev', found {self.line(number).strip()!r}"
                )
            values = tokens[2:]
            if len(values) != 4:
                raise self.error(
                    number,
                    f"wrong column count: expected 4 numbers after '{name} =' (start 1, "
                    f"start 2, certified value, standard deviation), found {len(values)}",
                )
            what = f"the values of {name}"
            starts[0, i], starts[1, i], cert[i], sd[i] = (_number(t, self.path, number, what) for t in values)
        summary = {}
        for number in range(s_last + 1, c_last + 1):
            self._require_line(number, "Certified Values")
            text = self.line(number)
            if not text.strip():
                continue
            label, sep, value = text.partition(":")
            key = _SUMMARY.get(" ".join(label.split()))
            if not sep or key is None:
                raise self.error(number, f"unexpected line in the Certified Values block: {text.strip()!r}")
            if key in summary:
                raise self.error(number, f"'{label.strip()}' appears twice in the Certified Values block")
            tokens = value.split()
            if len(tokens) != 1:
                raise self.error(
                    number, f"wrong column count: expected one number after '{label.strip()}:', found {len(tokens)}"
                )
            if key in ("dof", "nobs"):
                summary[key] = (_integer(tokens[0], self.path, number, label.strip()), number)
            else:
                summary[key] = (_number(tokens[0], self.path, number, label.strip()), number)
        for label, key in _SUMMARY.items():
            if key not in summary:
                raise self.error(
                    c_last,
                    f"missing section: no '{label}:' line in the Certified Values block (lines {c_first} to {c_last})",
                )
        if summary["rss"][0] < 0:
            raise self.error(summary["rss"][1], "negative residual sum of squares")
        return starts, cert, sd, {k_: (v[0], v[1]) for k_, v in summary.items()}

    def _declaration_line(self, label: str) -> int:
        number, _ = self.find(_DECLARATION[label])
        return number or 1

    def _require_line(self, number: int, block: str):
        if number > len(self.lines):
            raise self.error(number, f"the file ends at line {len(self.lines)}, inside the {block} block")

    def _data(self, block, columns, response, predictors, num_obs, obs_line):
        first, last = block
        declared = last - first + 1
        if declared != num_obs:
            raise self.error(
                self._declaration_line("Data"),
                f"wrong number of observations: the Data block is declared as lines {first} to {last} "
                f"({declared} rows) but the header (line {obs_line}) says {num_obs} Observations",
            )
        if len(self.lines) < last:
            found = max(len(self.lines) - first + 1, 0)
            raise self.error(
                len(self.lines) + 1,
                f"wrong number of observations: the file ends at line {len(self.lines)} but the Data "
                f"block runs to line {last} ({num_obs} observations expected, {found} found)",
            )
        table = np.empty((declared, len(columns)))
        for row, number in enumerate(range(first, last + 1)):
            tokens = self.line(number).split()
            if len(tokens) != len(columns):
                raise self.error(
                    number,
                    f"wrong column count: expected {len(columns)} numbers ({' '.join(columns)}), found {len(tokens)}",
                )
            for j, token in enumerate(tokens):
                table[row, j] = _number(token, self.path, number, f"column {columns[j]} of the data")
        for number in range(last + 1, len(self.lines) + 1):
            if self.line(number).strip():
                raise self.error(
                    number,
                    f"unexpected text after the Data block (which ends at line {last}): "
                    f"{self.line(number).strip()[:40]!r}",
                )
        y = table[:, columns.index(response)]
        x = table[:, [columns.index(p) for p in predictors]]
        if len(predictors) == 1:
            x = x[:, 0]
        return np.ascontiguousarray(x), np.ascontiguousarray(y)

    def _model(self, start: int, stop: int, params, predictors, response):
        """The equation ``lhs = rhs + e`` between ``start`` and the Starting Values table."""
        constants: dict[str, float] = {"pi": math.pi}
        reserved = set(params) | set(predictors) | {response} | set(FUNCTIONS)
        equation: list[tuple[int, str]] = []
        ended_at = None
        for number in range(start, stop):
            text = self.line(number)
            if re.search(r"Starting\s+values|Start\s+1", text, re.IGNORECASE):
                break
            if not text.strip():
                continue
            if ended_at is not None:
                raise self.error(
                    number,
                    f"unexpected text after the model equation (which ends at line {ended_at} "
                    f"with '+ e'): {text.strip()[:40]!r}",
                )
            definition = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*=\s*(\S+)\s*", text)
            if not equation and definition and definition.group(1) not in reserved:
                constants[definition.group(1)] = _number(
                    definition.group(2), self.path, number, f"the definition of {definition.group(1)}"
                )
                continue
            equation.append((number, text))
            if re.search(r"\+\s*e\s*$", text):
                ended_at = number
        if not equation:
            raise self.error(start, "missing section: no model equation 'y = f(x, b) + e' in the Model section")
        if ended_at is None:
            raise self.error(equation[-1][0], "the model equation must end with '+ e'")
        first_line, first_text = equation[0]
        lhs, eq, rest = first_text.partition("=")
        if not eq:
            raise self.error(first_line, f"expected 'y = ...' in the model, found {first_text.strip()!r}")
        rhs_lines = [" " * (len(lhs) + 1) + rest] + [t for _, t in equation[1:]]
        rhs_lines[-1] = re.sub(r"\+\s*e\s*$", "", rhs_lines[-1])
        rhs_text = "\n".join(rhs_lines)
        variables = set(params) | set(predictors) | set(constants)
        if response in constants or any(p in constants for p in predictors):
            raise self.error(first_line, "a constant definition shadows a data column")
        lhs_tree, lhs_used = _compile(
            lhs, first_line, {response} | set(constants), self.path, "left-hand side of the model"
        )
        if response not in lhs_used:
            raise self.error(first_line, f"the left-hand side of the model must involve the response {response!r}")
        rhs_tree, rhs_used = _compile(rhs_text, first_line, variables, self.path, "model")
        unused = [p for p in params if p not in rhs_used]
        if unused:
            raise self.error(
                first_line,
                f"the model does not use parameter(s) {', '.join(unused)} although {len(params)} are declared",
            )
        missing = [p for p in predictors if p not in rhs_used]
        if missing:
            raise self.error(first_line, f"the model does not use the data column(s) {', '.join(missing)}")
        model_text = " ".join(" ".join(t.split()) for _, t in equation)
        model_text = re.sub(r"\s*\+\s*e\s*$", "", model_text)
        model = NistModel(
            " ".join(lhs.split()),
            " ".join(rhs_text.split()),
            params,
            predictors,
            response,
            constants,
            lhs_tree,
            rhs_tree,
        )
        return model_text, model


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.flags.writeable = False
    return a
