"""Every committed report names what made it: its command, the commit, package versions
and the hardware (the guide's rule for results files), so a table can be traced to its run."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.helpers.serving import REPO

FIELDS = ("command", "commit", "versions", "hardware")


def committed_reports() -> list[str]:
    out = subprocess.run(["git", "ls-files", "results"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.split()
    return sorted(p for p in out if p.endswith("report.md"))


def test_there_are_reports():
    assert len(committed_reports()) > 20


@pytest.mark.parametrize("report", committed_reports())
def test_every_report_names_command_commit_versions_and_hardware(report):
    text = (REPO / report).read_text()
    missing = [f for f in FIELDS if not re.search(rf"^\s*- {f}: \S", text, re.M)]
    assert not missing, f"{report} lacks {missing}"
    commit = re.search(r"^\s*- commit: .*`([0-9a-f]{7,40})", text, re.M)
    assert commit, f"{report}: the commit is not a hash"
