"""``cdcsync check`` hides secrets in its findings without mangling the words around them."""

from __future__ import annotations

from cdc.ops.check.report import Finding, scrub


def _scrubbed(message: str, secrets: list[str]) -> str:
    (finding,) = scrub([Finding.problem("source", message)], secrets)
    return finding.message


def test_a_one_character_secret_is_hidden_where_it_stands_alone_not_inside_words() -> None:
    shown = _scrubbed("mysql and postgresql refused password y for user cdc", ["y"])
    assert shown == "mysql and postgresql refused password *** for user cdc"


def test_a_long_secret_is_hidden_wherever_it_appears() -> None:
    shown = _scrubbed("token=abcdefgh1234 and xabcdefgh1234y", ["abcdefgh1234"])
    assert "abcdefgh1234" not in shown
