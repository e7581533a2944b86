"""Put the chargpt pipeline under pytest-spml L1: ``pytest --spml-l1`` trains it and runs every L1 check."""

import pytest

from l1 import CharGPTPipeline


@pytest.fixture(scope="session")
def spml_pipeline() -> CharGPTPipeline:
    return CharGPTPipeline()
