"""``cdcsync demo`` end to end: the real command in a child process, on its own servers.

The demo starts its own PostgreSQL, broker, registry and CRM, so these tests need no
fixture; they check what a user sees (the summary) and that nothing is left behind
(no temporary directory, no process of the demo's servers).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

DEMO = [sys.executable, "-m", "cdc.cli", "demo"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _demo_dir(output: str) -> Path:
    found = re.search(r"^demo directory: (\S+)$", output, re.MULTILINE)
    assert found is not None, output
    return Path(found.group(1))


def _broker_url(output: str) -> str:
    found = re.search(r"broker (127\.0\.0\.1:\d+)", output)
    assert found is not None, output
    return f"tcp://{found.group(1)}"


def _processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes that contain any of ``needles``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(needle in cmdline for needle in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


def _applied(output: str, integration: str) -> int:
    found = re.search(rf"^\s*{integration}: applied (\d+)", output, re.MULTILINE)
    assert found is not None, output
    return int(found.group(1))


def _assert_nothing_left_behind(output: str) -> None:
    workdir = _demo_dir(output)
    assert not workdir.exists(), f"{workdir} was left behind"
    assert _processes_mentioning(str(workdir), _broker_url(output)) == []


@pytest.mark.timeout(200)
def test_a_bounded_demo_syncs_both_integrations_and_reports_a_matching_check() -> None:
    done = subprocess.run(
        [*DEMO, "--duration", "20", "--rate", "40"],
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    output = done.stdout
    assert done.returncode == 0, f"{output}\n--- stderr ---\n{done.stderr}"
    assert _applied(output, "crm") > 0
    assert _applied(output, "analytics") > 0
    assert "consistency check: MATCHED" in output
    written = re.search(r"rows written: (\d+)", output)
    captured = re.search(r"events captured: (\d+)", output)
    assert written is not None and captured is not None
    assert int(captured.group(1)) == int(written.group(1))
    # The log goes with the directory, so no path to it is printed.
    assert "log file" not in output
    assert "--keep keeps them" in output
    _assert_nothing_left_behind(output)


@pytest.mark.timeout(200)
def test_with_keep_the_demo_leaves_a_log_that_tells_what_happened() -> None:
    done = subprocess.run(
        [*DEMO, "--duration", "5", "--rate", "20", "--keep"],
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    output = done.stdout
    workdir = _demo_dir(output)
    try:
        assert done.returncode == 0, f"{output}\n--- stderr ---\n{done.stderr}"
        found = re.search(r"^  log file: (\S+)$", output, re.MULTILINE)
        assert found is not None, output
        log_path = Path(found.group(1))
        assert log_path.parent == workdir
        log = log_path.read_text(encoding="utf-8")
        assert "capture streaming from slot cdcsync_demo" in log
        assert "sync running: crm, analytics" in log
        assert "demo ended: consistency check: MATCHED" in log
        assert f"kept the demo directory: {workdir}" in output
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.timeout(200)
def test_ctrl_c_stops_the_demo_prints_the_summary_and_cleans_up() -> None:
    proc = subprocess.Popen(
        DEMO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        # Interrupt once the pipeline has been running a little while.
        deadline = time.monotonic() + 90
        while not any(line.startswith("[") for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        time.sleep(6)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines)
    assert proc.returncode in (0, 130), output
    assert "summary (stopped by signal)" in output
    assert "consistency check:" in output
    _assert_nothing_left_behind(output)
