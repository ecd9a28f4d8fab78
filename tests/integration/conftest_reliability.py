"""Prints the reliability summary (tests/reliability.py) at the end of the run.

Registered by the modules that measure something, with
`pytest_plugins = ["tests.integration.conftest_reliability"]`, so runs that do not
include them print nothing extra.
"""

from __future__ import annotations

from tests.reliability import summary_lines


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_sep("=", "reliability summary")
    for line in summary_lines():
        terminalreporter.write_line(line)
