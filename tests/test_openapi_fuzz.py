"""The OpenAPI document declares what the server enforces: schemathesis finds no request
the schema calls valid that is rejected (beyond the documented semantic checks in
tests/schemathesis.toml), no invalid one accepted, no 5xx, no undocumented status, and
405s that name every allowed method."""

from __future__ import annotations

import re

import pytest
from _fuzz import OPERATIONS, run_schemathesis
from _gateway_harness import running_stack

from vplab.storage import LocalStore

pytestmark = pytest.mark.integration


def test_schemathesis_finds_nothing(tmp_path):
    with running_stack(LocalStore(tmp_path / "store"), tmp_path) as st:
        report = run_schemathesis(st.url, st.keys[next(iter(st.keys))], 25)
    tested = re.search(r"Tested: (\d+)", report)
    assert tested and int(tested.group(1)) == OPERATIONS, report
