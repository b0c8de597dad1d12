"""The ``jaxnls`` command line (``python -m jaxnls``), run as a user would, in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxnls.__main__ import main

ROOT = Path(__file__).parent.parent
NIST_DIR = Path(__file__).parent / "data" / "nist"


def _run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "jaxnls", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def _table_rows(stdout: str) -> list[list[str]]:
    """The rows of the comparison table (values in E format; the demo's batch table has plain numbers)."""
    return [
        line.split() for line in stdout.splitlines() if re.match(r"^(b\d+\s+\S+|RSS)\s+\d\.\d{10}E[+-]\d\d\s", line)
    ]


def _lre_column(stdout: str) -> dict[str, float]:
    """Parameter/RSS name -> LRE of the value from the comparison table (name, start, ours, certified, LRE, ...;
    RSS: name, ours, certified, LRE)."""
    return {row[0]: float(row[3] if row[0] == "RSS" else row[4]) for row in _table_rows(stdout)}


def _standard_deviation_lre(stdout: str) -> dict[str, float]:
    """Parameter name -> LRE of our standard error against NIST's certified standard deviation (last column)."""
    return {row[0]: float(row[-1]) for row in _table_rows(stdout) if row[0] != "RSS"}


def test_demo():
    result = _run("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Eckerle4" in out and "certified" in out and "LRE" in out
    # NIST's certified values appear in the table (10 digits shown).
    for value in ("1.5543827178E+00", "4.0888321754E+00", "4.5154121844E+02", "1.4635887487E-03"):
        assert value in out
    lre = _lre_column(out)
    assert set(lre) == {"b1", "b2", "b3", "RSS"}
    assert min(lre.values()) >= 8
    assert "Termination: CONVERGENCE" in out
    # The batched part ran and reports its size and timing.
    assert "Problems                                      1024" in out
    assert re.search(r"\d+ converged fits of 1024", out)
    assert "µs per fit" in out


def test_solve_misra1a_start2():
    result = _run("solve", str(NIST_DIR / "Misra1a.dat"), "--start", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Misra1a" in out and "start 2" in out
    assert "2.3894212918E+02" in out and "5.5015643181E-04" in out and "1.2455138894E-01" in out
    lre = _lre_column(out)
    assert set(lre) == {"b1", "b2", "RSS"} and min(lre.values()) >= 8
    assert "Minimum LRE over the parameters" in out
    # NIST's certified standard deviations, and ours beside them
    assert "2.707008E+00" in out and "jaxnls std err" in out  # b1's certified standard deviation
    assert min(_standard_deviation_lre(out).values()) >= 6
    assert "Parameters (standard errors" in out


def test_solve_json_reports_params_and_standard_errors_of_a_nist_file():
    import json

    from jaxnls.io import log_relative_error, read_nist

    result = _run("solve", str(NIST_DIR / "Thurber.dat"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    problem = read_nist(NIST_DIR / "Thurber.dat")
    assert report["parameter_names"] == list(problem.parameter_names) and report["converged"] is True
    assert log_relative_error(report["params"], problem.certified_values).min() >= 8
    assert log_relative_error(report["stderr"], problem.certified_std_devs).min() >= 6
    assert report["rank"] == len(problem.certified_values)


def test_solve_other_solver_verbose():
    result = _run("solve", str(NIST_DIR / "DanWood.dat"), "--solver", "dogleg", "--verbose")
    assert result.returncode == 0, result.stderr
    assert "Dogleg, QR" in result.stdout
    assert "radius" in result.stdout  # the verbose per-iteration log
    assert min(_lre_column(result.stdout).values()) >= 8


def test_solve_not_converged_exits_1():
    result = _run("solve", str(NIST_DIR / "Misra1a.dat"), "--max-steps", "2")
    assert result.returncode == 1
    assert "MAX_STEPS" in result.stdout


def test_malformed_file_exits_2_with_line_number(tmp_path):
    lines = (NIST_DIR / "Misra1a.dat").read_text().splitlines()
    lines[64] = "      29.61E0     23x9.9E0"  # line 65
    bad = tmp_path / "bad.dat"
    bad.write_text("\n".join(lines) + "\n")
    result = _run("solve", str(bad))
    assert result.returncode == 2
    assert "line 65" in result.stderr and "non-numeric token '23x9.9E0'" in result.stderr
    assert str(bad) in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_missing_file_exits_2(tmp_path):
    result = _run("solve", str(tmp_path / "missing.dat"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "missing.dat" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["solve", str(NIST_DIR / "Misra1a.dat"), "--start", "3"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_main_in_process_malformed(tmp_path, capsys):
    bad = tmp_path / "bad.dat"
    bad.write_text((NIST_DIR / "Misra1a.dat").read_text().replace("14 Observations", "x Observations"))
    assert main(["solve", str(bad)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"line 27: expected a whole number", err)


def _run_with_cache(cache, *args):
    import os

    env = dict(os.environ, JAXNLS_CACHE_DIR=str(cache))
    return subprocess.run(
        [sys.executable, "-m", "jaxnls", *args], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env
    )


# (slow: ~18 s: three command-line processes; moved out of the default set to keep it within 10 minutes on 2 cores,
# benchmarks/README.md (at); CI runs the slow set)
@pytest.mark.slow
def test_the_persistent_compilation_cache_is_filled_reused_and_can_be_turned_off(tmp_path):
    """A NIST solve leaves compiled programs in the cache folder, a second run gives the same answer, and
    --no-cache or an empty JAXNLS_CACHE_DIR writes nothing (an uncreatable folder is no error)."""
    cache = tmp_path / "cache"
    first = _run_with_cache(cache, "solve", str(NIST_DIR / "Misra1a.dat"), "--json")
    assert first.returncode == 0, first.stderr
    assert cache.is_dir() and any(cache.iterdir())
    second = _run_with_cache(cache, "solve", str(NIST_DIR / "Misra1a.dat"), "--json")
    assert (
        second.returncode == 0
        and second.stdout.split('"seconds_with_compilation"')[0] == first.stdout.split('"seconds_with_compilation"')[0]
    )
    off = tmp_path / "off"
    assert _run_with_cache(off, "solve", str(NIST_DIR / "Misra1a.dat"), "--no-cache").returncode == 0
    assert not off.exists()
    assert _run_with_cache("", "solve", str(NIST_DIR / "Misra1a.dat")).returncode == 0
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert _run_with_cache(blocked / "cache", "solve", str(NIST_DIR / "Misra1a.dat")).returncode == 0


_SETTINGS = """
import json, sys
import jax, jax.numpy as jnp
from jaxnls.__main__ import main

def settings():
    names = ("jax_enable_x64", "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    return {name: getattr(jax.config, name) for name in names}

before = settings()
code = main(["solve", sys.argv[1], "--json"])
print(json.dumps({"code": code, "before": before, "after": settings(), "dtype": str(jnp.ones(1).dtype)}))
"""


def test_a_program_calling_main_keeps_its_jax_settings(tmp_path):
    """``main`` turns on float64 and JAX's persistent compilation cache for its command only: a float32
    program that calls it gets its settings back (float32 arrays, no cache), and the command still used the cache."""
    cache = tmp_path / "cache"
    run = subprocess.run(
        [sys.executable, "-c", _SETTINGS, str(NIST_DIR / "Misra1a.dat")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("JAX_")} | {"JAXNLS_CACHE_DIR": str(cache)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["code"] == 0 and report["before"]["jax_enable_x64"] is False
    assert report["after"] == report["before"] and report["dtype"] == "float32"
    assert cache.is_dir() and any(cache.iterdir())


_ARENAS = """
import ctypes, sys
from jaxnls.__main__ import console, main
if sys.argv[2] == "console":  # the console script's process
    sys.argv = ["jaxnls", "solve", sys.argv[1], "--no-cache"]
    try:
        console()
    except SystemExit as exit:
        code = exit.code
else:  # another program calling main()
    code = main(["solve", sys.argv[1], "--no-cache"])
libc = ctypes.CDLL(None)
libc.fdopen.restype = ctypes.c_void_p
stream = ctypes.c_void_p(libc.fdopen(2, b"w"))
libc.malloc_info(0, stream)
libc.fflush(stream)
sys.exit(code)
"""


# (slow: ~13 s: command-line processes; moved out of the default set to keep it within 10 minutes on 2 cores,
# benchmarks/README.md (at); CI runs the slow set)
@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_the_command_line_keeps_one_malloc_arena_unless_the_environment_says_otherwise():
    """``jaxnls solve`` asks glibc for one malloc arena (XLA's threads would each keep one of freed memory):
    glibc's own report (``malloc_info``) after a graph solve lists one heap; with ``MALLOC_ARENA_MAX`` set, the
    user's choice stands and XLA's threads get arenas of their own. A program that calls ``main`` itself keeps
    its allocator as it was (glibc's several arenas)."""
    graph = str(ROOT / "tests" / "data" / "graphs" / "w100.graph")

    def heaps(entry="console", **env):
        run = subprocess.run(
            [sys.executable, "-c", _ARENAS, graph, entry],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
            env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env,
        )
        assert run.returncode == 0, run.stderr
        return len(re.findall(r'<heap nr="\d+">', run.stderr))

    assert heaps() == 1
    assert heaps(MALLOC_ARENA_MAX="8") > 1
    assert heaps("main") > 1


@pytest.mark.slow  # (10 s: two fresh processes under -X importtime; benchmarks/README.md (av))
@pytest.mark.skipif(importlib.util.find_spec("flax") is None, reason="Flax is not installed: nothing to keep out")
def test_the_console_process_keeps_flax_out_and_main_leaves_a_callers_imports_alone():
    """``python -m jaxnls solve`` of a pose graph imports jaxlie (and jax_dataclasses, which imports Flax when it is
    installed) but not Flax, by CPython's own import log (``-X importtime``); a program that calls ``main`` itself
    still gets Flax from jaxlie's import, as it would without jaxnls."""
    graph = str(ROOT / "tests" / "data" / "graphs" / "w100.graph")

    def imported(*command):
        run = subprocess.run(
            [sys.executable, "-X", "importtime", *command], capture_output=True, text=True, cwd=ROOT, timeout=300
        )
        assert run.returncode == 0, run.stderr[-2000:]
        return {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}

    console = imported("-m", "jaxnls", "solve", graph, "--no-cache")
    # (the refused ``import flax`` itself is logged, in microseconds; none of Flax's modules is)
    assert {"jaxlie", "jax_dataclasses"} <= console and not {name for name in console if name.startswith("flax.")}
    called = imported("-c", f"from jaxnls.__main__ import main; main(['solve', {graph!r}, '--no-cache'])")
    assert {"jaxlie", "jax_dataclasses", "flax", "flax.serialization"} <= called
