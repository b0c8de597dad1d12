"""The suite's ``xdist_group`` marks keep a group's tests on one worker (pyproject: ``--dist loadgroup``).

The groups share work that is expensive to repeat: the trained SWAT-NN model (tests/test_swat_search.py), a NIST
problem's compiled programs (tests/test_nist.py), the wheel (tests/test_packaging.py), and the executed notebooks
that the site build renders (tests/test_docs.py). pytest-xdist marks a grouped test by appending ``@GROUP`` to its
node id on the worker; where a pytest release changes how node ids are stored, the suffix, and with it the grouping,
silently disappears (pytest 9.2 with pytest-xdist 3.8: pytest-xdist#1386) and every group's work is done once per
worker. This test sees that happen.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.xdist_group("grouping_check")


@pytest.mark.parametrize("member", [0, 1])
def test_grouped_tests_carry_their_group_to_the_scheduler(request, member):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by pytest-xdist with --dist loadgroup: no groups to keep together")
    assert request.node.nodeid.endswith("@grouping_check"), (
        f"{request.node.nodeid!r} lost its xdist group: this pytest ({pytest.__version__}) and pytest-xdist do not "
        "group tests together (see pyproject.toml's pin)"
    )
