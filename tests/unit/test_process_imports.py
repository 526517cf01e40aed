"""What a cdcsync process loads at start: httpx's command-line client and the console's
templates stay out until used (``cdc.core.httpx_cli``, ``Console.templates``)."""

from __future__ import annotations

import subprocess
import sys


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_capture_process_loads_neither_the_httpx_command_nor_jinja2() -> None:
    done = python(
        "import sys\n"
        "import cdc.cli, cdc.capture.runtime, cdc.sync.runtime, cdc.ops.admin_api, httpx\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'rich', 'pygments', 'jinja2'}), 'httpx' in loaded)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "[] True"


def test_httpx_main_still_runs_the_real_command_line_client() -> None:
    done = python("import sys\nimport cdc.cli, httpx\nsys.argv = ['httpx', '--help']\nhttpx.main()")
    assert done.returncode == 0, done.stderr
    assert "Usage: httpx <URL> [OPTIONS]" in done.stdout


def test_without_cdc_cli_httpx_loads_as_it_always_did() -> None:
    done = python("import sys, httpx\nprint('rich' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]
