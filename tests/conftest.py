"""Test configuration: the real-server fixtures live in tests/fix_*.py plugins."""

pytest_plugins = ["tests.fix_pg", "tests.fix_kafka", "tests.fix_registry"]
