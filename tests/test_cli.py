import subprocess
import sys

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssd_tutorial.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_anchors_prints_the_table():
    result = run_cli("anchors", "--config", "SSD512")
    assert result.returncode == 0, result.stderr
    assert "24564 default boxes" in result.stdout
    assert "64x64" in result.stdout


def test_unknown_config_is_a_clear_error():
    result = run_cli("anchors", "--config", "SSD999")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize("command", [[], ["anchors"]])
def test_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert "usage: ssd-tutorial" in result.stdout
