"""The console's files ship in the package and name nothing outside it."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "cdc" / "ops" / "console"


def test_every_template_and_static_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["cdc.ops.console"]
    files = [
        p.relative_to(CONSOLE).as_posix()
        for folder in ("templates", "static")
        for p in (CONSOLE / folder).rglob("*")
        if p.is_file()
    ]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert missing == []


def test_the_vendored_libraries_come_with_their_licences() -> None:
    vendor = {p.name for p in (CONSOLE / "static" / "vendor").iterdir()}
    assert {"htmx-LICENSE.txt", "uPlot-LICENSE.txt"} <= vendor


def test_no_page_loads_anything_from_another_host() -> None:
    for template in (CONSOLE / "templates").glob("*.html"):
        sources = re.findall(r'(?:src|href)="([^"]*)"', template.read_text())
        remote = [s for s in sources if "//" in s and not s.startswith("/console/")]
        assert remote == [], template.name
