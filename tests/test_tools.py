"""A test that needs a missing tool skips with its reason, but fails under CI=true."""

from __future__ import annotations

import pytest

import conftest

MISSING = "no-such-tool-for-this-test"


def test_a_missing_tool_fails_the_test_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING} is not installed"):
        conftest.require_tool(MISSING)


def test_a_missing_tool_skips_the_test_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} is not installed"):
        conftest.require_tool(MISSING)


@pytest.mark.parametrize("tool", ["honcho", "ruff", "hadolint", "redis-server", "chromium"])
def test_every_tool_the_suite_uses_is_found_here(tool: str) -> None:
    assert conftest.require_tool(tool)
