"""Our compatibility checker agrees with Apache Avro's Java implementation on a corpus.

tests/compat_corpus.json holds reader/writer schema pairs: numeric and
string/bytes promotions, added and removed fields with and without defaults,
enums, unions, aliases, namespaces, fixed sizes, nested records, arrays and
maps, recursion. Java's ``SchemaCompatibility.checkReaderWriterCompatibility``
is the reference; ``schema_registry.compatibility.check`` must give the same
verdict on every pair.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schema_registry.compatibility import check
from tests.java.jvm import compile_probes, run_probe

CORPUS = Path(__file__).resolve().parents[1] / "compat_corpus.json"
PAIRS: list[dict[str, Any]] = json.loads(CORPUS.read_text())


@pytest.fixture(scope="module")
def java_verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    classpath = compile_probes(tmp_path_factory.getbasetemp() / "java-probes")
    out = tmp_path_factory.mktemp("compat") / "verdicts.json"
    run_probe(classpath, "CompatProbe", str(CORPUS), str(out))
    return {row["name"]: row for row in json.loads(out.read_text())}


def test_the_corpus_covers_enough_pairs_with_both_verdicts(
    java_verdicts: dict[str, dict[str, Any]],
) -> None:
    verdicts = [row["verdict"] for row in java_verdicts.values()]
    assert len(PAIRS) >= 30
    assert set(java_verdicts) == {pair["name"] for pair in PAIRS}
    assert verdicts.count("COMPATIBLE") >= 10
    assert verdicts.count("INCOMPATIBLE") >= 10
    assert "ERROR" not in verdicts, [r for r in java_verdicts.values() if r["verdict"] == "ERROR"]


@pytest.mark.parametrize("pair", PAIRS, ids=[pair["name"] for pair in PAIRS])
def test_compatibility_verdict_matches_java_avro(
    pair: dict[str, Any], java_verdicts: dict[str, dict[str, Any]]
) -> None:
    java = java_verdicts[pair["name"]]
    ours = check(reader=json.dumps(pair["reader"]), writer=json.dumps(pair["writer"]))
    assert ("COMPATIBLE" if ours.compatible else "INCOMPATIBLE") == java["verdict"], (
        f"Java: {java['verdict']} {java['messages']}; ours: {ours.messages}"
    )
    assert bool(ours.messages) == (not ours.compatible)
