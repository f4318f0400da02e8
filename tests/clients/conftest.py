"""pytest fixtures for the cross-client conformance suite.

`broker` (module scope): a Broker (host, port, user, password, vhost, url).
With WARREN_TEST_AMQP_URL set it is that external broker; otherwise a fresh
warren process is started for the module and stopped afterwards.
"""
from __future__ import annotations

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import brokerctl  # noqa: E402


@pytest.fixture(scope="module")
def broker():
    b = brokerctl.acquire_broker()
    try:
        yield b
    finally:
        brokerctl.release_broker(b)


@pytest.fixture
def uniq(request):
    """Factory for unique, test-specific resource names: uniq('q') -> 'wct.<test>.q.<hex>'."""
    base = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:40]

    def make(suffix: str = "") -> str:
        return brokerctl.unique(base + ("." + suffix if suffix else ""))

    return make


def pytest_terminal_summary(terminalreporter):
    """Show extra per-suite summaries (e.g. the amqp091-go pass/fail/skip counts)."""
    if brokerctl.REPORT_LINES:
        terminalreporter.section("client suite summaries")
        for line in brokerctl.REPORT_LINES:
            terminalreporter.write_line(line)
