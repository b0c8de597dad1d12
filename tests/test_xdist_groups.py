"""The suite's ``xdist_group`` marks keep a group's tests on one worker (pyproject: ``--dist loadgroup``).

The groups share work that is expensive to repeat: the trained SWAT-NN model (tests/test_swat_search.py), a NIST
problem's compiled programs (tests/test_nist.py), the wheel (tests/test_packaging.py), and the executed notebooks
that the site build renders (tests/test_docs.py). Where a pytest / pytest-xdist pair stops honouring the marks, the
suite still passes, only slower and with the site build racing the notebooks (pytest 9.2 with pytest-xdist 3.8:
pytest-xdist#1386). This test sees that happen: the group's second member checks that the first ran on its worker.
"""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.xdist_group("grouping_check")


@pytest.mark.parametrize("member", [0, 1])
def test_a_group_runs_on_one_worker(member, request, tmp_path_factory, worker_id):
    if worker_id == "master" or not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by pytest-xdist with --dist loadgroup: no groups to keep together")
    # the run's base folder, shared by its workers (each has its own folder below it)
    record = tmp_path_factory.getbasetemp().parent / f"group-check-{os.environ.get('PYTEST_XDIST_TESTRUNUID', '')}"
    if member == 0:
        record.write_text(worker_id)
        return
    deadline = time.monotonic() + 60  # a broken grouping may run the members at once on two workers
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    ran_on = record.read_text() if record.exists() else "no worker before this one"
    assert ran_on == worker_id, (
        f"the group's first test ran on {ran_on}, its second on {worker_id}: this pytest ({pytest.__version__}) and "
        "pytest-xdist do not keep a group on one worker (see pyproject.toml's pin)"
    )
