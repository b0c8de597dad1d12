"""The NIST StRD reader: parsed values against the files themselves, the model against NIST's certified
residual sum of squares, and strict, line-numbered errors for malformed files."""

from __future__ import annotations

import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxnls.io import NistFormatError, NistProblem, log_relative_error, parse_nist, read_nist

NIST_DIR = Path(__file__).parent / "data" / "nist"
FILES = sorted(NIST_DIR.glob("*.dat"))
NAMES = [f.stem for f in FILES]


def test_all_27_files_present():
    assert len(FILES) == 27


# --------------------------------------------------------------------------------------------------
# An independent, deliberately simple reading of each file.


def _simple_read(path: Path):
    text = path.read_text()
    lines = text.splitlines()
    params = re.findall(r"^\s*b(\d+)\s*=\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", text, re.MULTILINE)
    rss = float(re.search(r"Residual Sum of Squares:\s*(\S+)", text).group(1))
    nobs = int(re.search(r"^\s*(\d+)\s+Observations", text, re.MULTILINE).group(1))
    header_at = max(i for i, line in enumerate(lines) if line.startswith("Data:"))
    columns = lines[header_at].split()[1:]
    rows = [[float(t) for t in line.split()] for line in lines[header_at + 1 :] if line.strip()]
    return params, rss, nobs, columns, np.array(rows)


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_reader_matches_file(path):
    problem = read_nist(path)
    params, rss, nobs, columns, rows = _simple_read(path)
    assert isinstance(problem, NistProblem)
    assert problem.name == path.stem
    k = len(params)
    assert problem.num_params == k
    assert problem.parameter_names == tuple(f"b{i}" for i in range(1, k + 1))
    assert [int(p[0]) for p in params] == list(range(1, k + 1))
    expected = np.array([[float(v) for v in p[1:]] for p in params])
    np.testing.assert_array_equal(problem.starts, expected[:, :2].T)
    np.testing.assert_array_equal(problem.certified_values, expected[:, 2])
    np.testing.assert_array_equal(problem.certified_std_devs, expected[:, 3])
    assert problem.certified_rss == rss
    assert problem.num_observations == nobs == rows.shape[0]
    assert problem.difficulty in ("Lower", "Average", "Higher")
    # Columns by name, whatever their order in the file.
    np.testing.assert_array_equal(problem.y, rows[:, columns.index("y")])
    predictors = [c for c in columns if c.startswith("x")]
    x = rows[:, [columns.index(c) for c in predictors]]
    np.testing.assert_array_equal(problem.x, x[:, 0] if len(predictors) == 1 else x)
    for array in (problem.x, problem.y, problem.starts, problem.certified_values):
        assert array.dtype == np.float64
        assert not array.flags.writeable
    assert problem.args == (problem.x, problem.y)


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_model_reproduces_certified_rss(path):
    """The translated model, evaluated at NIST's certified parameters, gives NIST's residual sum of
    squares: an independent check of the model text translation (brackets, powers, pi, log[y], ...)."""
    problem = read_nist(path)
    rss = float(problem.rss(problem.certified_values))
    if problem.name == "Lanczos1":
        # Certified RSS 1.43e-25 is the full-precision minimum; the 11 printed digits of the parameters
        # move the residuals by ~1e-11, which gives ~4e-21. Check the printed digits are that close.
        assert rss < 1e-19
        return
    assert rss == pytest.approx(problem.certified_rss, rel=1e-9)
    # The JAX residual function agrees with the NumPy evaluation.
    r_jax = np.asarray(problem.residual_fn(jnp.asarray(problem.certified_values), problem.args))
    r_np = problem.residual_fn.residuals(problem.certified_values, problem.x, problem.y, xp=np)
    assert r_jax.dtype == np.float64
    np.testing.assert_allclose(r_jax, r_np, rtol=1e-12, atol=1e-14 * np.max(np.abs(problem.y)))


def test_special_models():
    nelson = read_nist(NIST_DIR / "Nelson.dat")
    assert nelson.predictor_names == ("x1", "x2")
    assert nelson.x.shape == (128, 2)
    assert nelson.model.startswith("log[y] =")
    roszman = read_nist(NIST_DIR / "Roszman1.dat")
    assert roszman.residual_fn.constants["pi"] == 3.141592653589793
    enso = read_nist(NIST_DIR / "ENSO.dat")
    assert "b9*sin( 2*pi*x/b7 )" in enso.model  # the three-line model is joined
    hahn = read_nist(NIST_DIR / "Hahn1.dat")
    assert hahn.model == "y = (b1+b2*x+b3*x**2+b4*x**3) / (1+b5*x+b6*x**2+b7*x**3)"


def test_models_of_the_same_text_compare_equal():
    a, b = read_nist(NIST_DIR / "Gauss1.dat"), read_nist(NIST_DIR / "Gauss2.dat")
    assert a.residual_fn == b.residual_fn and hash(a.residual_fn) == hash(b.residual_fn)
    assert a.residual_fn != read_nist(NIST_DIR / "Misra1a.dat").residual_fn


def test_column_order_from_header():
    """A file with the columns as 'x y' is read by name, not by position."""
    lines = (NIST_DIR / "Misra1a.dat").read_text().splitlines()
    lines[59] = "Data:   x               y"
    for i in range(60, 74):
        y, x = lines[i].split()
        lines[i] = f"  {x}  {y}"
    swapped = parse_nist("\n".join(lines) + "\n", "swapped.dat")
    original = read_nist(NIST_DIR / "Misra1a.dat")
    np.testing.assert_array_equal(swapped.x, original.x)
    np.testing.assert_array_equal(swapped.y, original.y)


def test_crlf_line_endings():
    text = (NIST_DIR / "Misra1a.dat").read_text().replace("\n", "\r\n")
    problem = parse_nist(text, "crlf.dat")
    assert problem.num_observations == 14


def test_a_leading_byte_order_mark_is_skipped():
    raw = (NIST_DIR / "Misra1a.dat").read_bytes()
    marked = parse_nist(b"\xef\xbb\xbf" + raw, "bom.dat")
    plain = parse_nist(raw, "plain.dat")
    np.testing.assert_array_equal(marked.x, plain.x)
    np.testing.assert_array_equal(marked.y, plain.y)
    np.testing.assert_array_equal(marked.certified_values, plain.certified_values)


def test_log_relative_error():
    np.testing.assert_allclose(log_relative_error(1.0001, 1.0), 4.0, atol=1e-6)
    assert log_relative_error(2.0, 2.0) == 15.0
    assert log_relative_error(np.nan, 2.0) == 0.0
    assert log_relative_error(5.0, 1.0) == 0.0  # no agreeing digit
    np.testing.assert_allclose(log_relative_error(1e-9, 0.0), 9.0)  # absolute error at 0


# --------------------------------------------------------------------------------------------------
# Malformed files: NistFormatError naming the file and line.


def _corrupt(tmp_path: Path, edit, name="Misra1a") -> Path:
    lines = (NIST_DIR / f"{name}.dat").read_text().splitlines()
    lines = edit(lines)
    path = tmp_path / f"{name}-bad.dat"
    path.write_text("\n".join(lines) + "\n")
    return path


def _set(number: int, text: str):
    def edit(lines):
        lines[number - 1] = text
        return lines

    return edit


def _error(path: Path) -> NistFormatError:
    with pytest.raises(NistFormatError) as info:
        read_nist(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(path) in str(err)
    assert f"line {err.line}:" in str(err)
    return err


def test_error_non_numeric_data_token(tmp_path):
    err = _error(_corrupt(tmp_path, _set(63, "      17.94E0     141.1X0")))
    assert err.line == 63 and "non-numeric token '141.1X0'" in str(err)


def test_error_nan_in_data(tmp_path):
    err = _error(_corrupt(tmp_path, _set(65, "      NaN     239.9E0")))
    assert err.line == 65 and "non-finite" in str(err)


def test_error_overflowing_number(tmp_path):
    err = _error(_corrupt(tmp_path, _set(66, "      35.18E0     289.0E999")))
    assert err.line == 66 and "non-finite" in str(err)


def test_error_nan_in_certified_values(tmp_path):
    err = _error(_corrupt(tmp_path, _set(42, "  b2 =     0.0001      0.0005      nan  7.2668688436E-06")))
    assert err.line == 42 and "non-finite" in str(err)


def test_error_truncated_data(tmp_path):
    err = _error(_corrupt(tmp_path, lambda lines: lines[:70]))
    assert err.line == 71
    assert "14 observations expected, 10 found" in str(err)


def test_error_wrong_column_count(tmp_path):
    err = _error(_corrupt(tmp_path, _set(70, "      55.05E0     477.3E0   1.0")))
    assert err.line == 70 and "wrong column count" in str(err)


def test_error_parameter_line_column_count(tmp_path):
    err = _error(_corrupt(tmp_path, _set(41, "  b1 =   500         250           2.3894212918E+02")))
    assert err.line == 41 and "wrong column count" in str(err)


def test_error_observation_count_mismatch(tmp_path):
    err = _error(_corrupt(tmp_path, _set(27, "               15 Observations")))
    assert err.line == 7  # the Data (lines 61 to 74) declaration
    assert "wrong number of observations" in str(err) and "15 Observations" in str(err)


def test_error_text_after_data(tmp_path):
    err = _error(_corrupt(tmp_path, lambda lines: lines + ["", "      1.0E0   2.0E0"]))
    assert err.line == 76 and "after the Data block" in str(err)


@pytest.mark.parametrize(
    "line, text, reason",
    [
        (5, "               Starting Values   (lines 41 to 43)", "3 lines but the model has 2 parameters"),
        (31, "Modle:         Exponential Class", "missing section: no 'Model:'"),
        (7, "               Dta              (lines 61 to 74)", "missing section: no 'Data (lines A to B)'"),
        (60, "", "missing section: expected the data column header"),
        (44, "Residual Sum of Square:                    1.2455138894E-01", "unexpected line"),
    ],
)
def test_error_missing_sections(tmp_path, line, text, reason):
    err = _error(_corrupt(tmp_path, _set(line, text)))
    assert reason in str(err)
    expected_line = {31: 1, 7: 4}.get(line, line)
    assert err.line == expected_line


@pytest.mark.parametrize(
    "model, reason",
    [
        ("y = b1*(1-exp[-b2*z])  +  e", "unknown name 'z'"),
        ("y = b1*(1-foo[-b2*x])  +  e", "'foo' is not a known function"),
        ("y = b1*(1-exp[-b2*x]  +  e", "cannot parse"),
        ("y = b1*(1-exp[-b2*x])", "must end with '+ e'"),
        ("y = b1*(1-exp[-x])  +  e", "does not use parameter(s) b2"),
        ("y = b1*(1-exp[-b2*x]) + b1.real  +  e", "unsupported syntax (Attribute)"),
        ("y = __import__('os').system('true') + b1*b2*x + e", "unexpected character"),
        ("y = b1*(1-exp[-b2*x]) + exp[] + e", "exp takes exactly one argument"),
        ("y = b1*(1-exp[-b2*x]) + exp[x, x] + e", "unexpected character ','"),
    ],
)
def test_error_bad_model(tmp_path, model, reason):
    err = _error(_corrupt(tmp_path, _set(34, "               " + model)))
    assert err.line == 34
    assert reason in str(err)


def test_error_unknown_name_on_continuation_line(tmp_path):
    """ENSO's model spans lines 34-36: the error names the line the unknown name is on."""
    err = _error(
        _corrupt(tmp_path, _set(35, "                      + b5*cos( 2*pi*x/b4 ) + b6*sin( 2*tau*x/b4 )"), name="ENSO")
    )
    assert err.line == 35 and "unknown name 'tau'" in str(err)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_nist(tmp_path / "nope.dat")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.dat"
    path.write_text("")
    assert _error(path).line == 1


# --------------------------------------------------------------------------------------------------
# Fuzz: any deletion / garbling of lines raises NistFormatError or nothing, never another exception.

_BASES = {
    name: (NIST_DIR / f"{name}.dat").read_bytes().split(b"\n") for name in ("Misra1a", "Nelson", "ENSO", "Roszman1")
}
_GARBAGE = st.one_of(
    st.binary(max_size=40),
    st.text(alphabet="0123456789 .+-eE*/()[]=:bxyp\t", max_size=40).map(str.encode),
    st.sampled_from(
        [
            b"nan",
            b"inf",
            b"1e999",
            b"9" * 5000,
            b"(" * 300,
            b"b1+" * 400 + b"x",
            b"y = b1 + e",
            b"Data:   y   x",
            b"Model:",
            b"b1 = 1 2 3 4",
        ]
    ),
)
_EDIT = st.tuples(
    st.sampled_from(["delete", "replace", "duplicate", "garble_char", "swap"]), st.integers(0, 10_000), _GARBAGE
)


def _apply(lines: list[bytes], edit) -> list[bytes]:
    kind, where, garbage = edit
    lines = list(lines)
    if not lines:
        return [garbage]
    i = where % len(lines)
    if kind == "delete":
        del lines[i]
    elif kind == "replace":
        lines[i] = garbage
    elif kind == "duplicate":
        lines.insert(i, lines[i])
    elif kind == "swap":
        j = (where // 7) % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
    elif lines[i]:
        c = (where // 3) % len(lines[i])
        lines[i] = lines[i][:c] + (garbage[:1] or b"#") + lines[i][c + 1 :]
    return lines


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(sorted(_BASES)), edits=st.lists(_EDIT, min_size=1, max_size=4))
def test_fuzz_only_nist_format_errors(base, edits):
    lines = _BASES[base]
    for edit in edits:
        lines = _apply(lines, edit)
    try:
        problem = parse_nist(b"\n".join(lines), f"{base}-fuzz.dat")
    except NistFormatError as err:
        assert re.search(r", line \d+: ", str(err))
        return
    # Whatever still parses is a complete, consistent problem.
    assert problem.starts.shape == (2, problem.num_params)
    assert problem.x.shape[0] == problem.y.shape[0] == problem.num_observations
    assert np.all(np.isfinite(problem.y))
