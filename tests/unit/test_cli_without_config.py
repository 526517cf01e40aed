"""Commands that need a configuration, run without ``--config``: the error says a file is
expected, then what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(
    *args: str, cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDCSYNC_")}
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )


@pytest.mark.parametrize("command", ["capture", "sync", "run", "status"])
def test_a_command_without_config_says_a_config_file_is_expected(
    command: str, tmp_path: Path
) -> None:
    done = _run(command, cwd=tmp_path)
    assert done.returncode == 2
    first, *rest = done.stderr.splitlines()
    assert first.startswith("cdcsync: configuration error: no configuration file given: pass")
    assert "--config FILE" in first
    assert "CDCSYNC_SECTION__KEY" in first
    assert any(line.startswith("source: field required") for line in rest)


def test_environment_variables_alone_still_name_what_is_missing(tmp_path: Path) -> None:
    done = _run(
        "capture",
        cwd=tmp_path,
        extra_env={"CDCSYNC_SOURCE__DSN": "postgresql://cdc:hunter2@db/app"},
    )
    assert done.returncode == 2
    assert "no configuration file given" in done.stderr
    assert "kafka: field required" in done.stderr
    assert "source: field required" not in done.stderr
    assert "hunter2" not in done.stderr


def test_a_named_file_that_is_incomplete_does_not_ask_for_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cdcsync.yaml"
    path.write_text("source:\n  dsn: postgresql://cdc@db/app\n")
    done = _run("capture", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "no configuration file given" not in done.stderr
    assert "kafka: field required" in done.stderr
