"""Shared test helpers: where fixtures live, and importing the PyTorch references under tests/reference/."""

import importlib
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REFERENCE_DIR = TESTS_DIR / "reference"
FIXTURES_DIR = TESTS_DIR / "fixtures"


def import_reference(module_name):
    """Import tests/reference/<module_name>.py; skips the calling test when torch is not installed."""
    pytest.importorskip("torch")
    if str(REFERENCE_DIR) not in sys.path:
        sys.path.insert(0, str(REFERENCE_DIR))
    return importlib.import_module(module_name)


@pytest.fixture
def torch():
    """The torch module, or a skip when it is not installed."""
    return pytest.importorskip("torch")
