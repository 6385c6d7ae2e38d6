"""servelab.tools: finding the system tools, hiding them on purpose, and saying what is missing."""

import os

import pytest

from servelab import load, nginx, tools


def test_every_tool_names_its_package_and_what_it_is_for():
    for tool in tools.TOOLS.values():
        assert tool.package and tool.purpose and tool.without
        assert tool.command or tool.paths, f"{tool.name}: nothing to look for"


def test_without_hides_a_tool_everywhere(monkeypatch):
    monkeypatch.setenv(tools.WITHOUT_ENV, "nginx, wrk")
    assert tools.hidden() == {"nginx", "wrk"}
    assert tools.find("nginx") is None and tools.find("wrk") is None
    assert not nginx.available() and not load.wrk_available()
    assert {"nginx", "wrk"} <= {tool.name for tool in tools.missing()}


def test_missing_reason_says_what_what_for_and_how(monkeypatch):
    monkeypatch.setenv(tools.WITHOUT_ENV, "chromium")
    reason = tools.missing_reason("chromium")
    assert reason.startswith("chromium is missing")
    assert "headless browser" in reason and "apt-get install chromium" in reason
    assert "skipped" in reason and "\n" not in reason


def test_hidden_tools_are_reported_but_not_installed(monkeypatch, capsys):
    monkeypatch.setenv(tools.WITHOUT_ENV, "wrk")
    assert tools.main(["missing"]) == 0
    assert "wrk" not in capsys.readouterr().out.split()
    assert tools.main(["report"]) == 0
    assert "servelab setup: wrk is missing" in capsys.readouterr().out
    assert tools.main(["nonsense"]) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the root spelling of the install command")
def test_install_command_as_root():
    assert tools.install_command(["wrk", "nginx-light"]) == "apt-get install wrk nginx-light"
