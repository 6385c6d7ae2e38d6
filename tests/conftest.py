"""Shared pytest set-up for tests/: slow tests (``@pytest.mark.slow``) run only when asked for.

``pytest tests -m slow`` runs just them, ``pytest tests --run-slow`` runs them with the rest; the
default run (and so ``make test``) skips them, because each one runs a whole chapter.
"""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs a whole chapter or more; skipped unless -m slow or --run-slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
