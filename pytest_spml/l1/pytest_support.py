"""L1 as pytest items: one test per check, all fed by one bounded training run.

In a test module next to the ``conftest.py`` that defines ``spml_pipeline``::

    from pytest_spml.l1 import l1_tests

    test_spml_l1 = l1_tests()

gives ``test_spml_l1[L1-LOSS]``, ``test_spml_l1[L1-RESUME]``, ... Without
``--spml-l1`` they are skipped with the reason; with it, the first one trains
the pipeline (session fixture ``spml_l1_report``) and each reports its check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ..report import Status
from .checks import CHECK_NAMES

CHECK_IDS = tuple(CHECK_NAMES)


def report_check(report: Any, check_id: str, item: pytest.Item) -> None:
    """Turn one check into the test's outcome; its numbers become JUnit properties."""
    result = report.checks[check_id]
    for key, value in result.evidence.items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            item.user_properties.append((f"{check_id}.{key}", value))
    if result.status is Status.SKIP:
        message = f"{check_id} {result.name}: {result.message}"
        try:  # report the skip at the test, not at this helper (as pytest does for skip markers)
            raise pytest.skip.Exception(message, _use_item_location=True)
        except TypeError:  # a pytest without the keyword
            pytest.skip(message)
    if result.status in (Status.FAIL, Status.ERROR):
        pytest.fail(f"{check_id} {result.name}: {result.message}", pytrace=False)


def l1_tests() -> Callable[..., None]:
    """A test function parametrized over every L1 check (assign it to a ``test_*`` name)."""

    @pytest.mark.spml_l1
    @pytest.mark.parametrize("spml_l1_check", CHECK_IDS)
    def test_spml_l1(spml_l1_report: Any, spml_l1_check: str, request: pytest.FixtureRequest) -> None:
        report_check(spml_l1_report, spml_l1_check, request.node)

    return test_spml_l1
