"""The expression language of declarative mappings: what it computes, refuses, and how it fails."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.core.errors import ConfigError, MappingError
from mappers.expr import MAX_DEPTH, Expression, compile_expression

WHERE = "integrations.crm.mapper.where"

ROW: dict[str, Any] = {
    "id": 7,
    "name": "  Ada Lovelace ",
    "email": None,
    "amount": Decimal("12.50"),
    "ratio": 0.5,
    "status": "active",
    "active": True,
    "tags": ["a", "b"],
}


def evaluate(text: str, row: dict[str, Any] | None = None) -> Any:
    return compile_expression(text, where=WHERE)(ROW if row is None else row)


# --------------------------------------------------------------------------- values


def test_a_bare_column_name_reads_that_column() -> None:
    expression = compile_expression("status", where=WHERE)
    assert expression({"status": "open"}) == "open"
    assert expression.column == "status"
    assert expression.columns == frozenset({"status"})


def test_an_expression_lists_every_column_it_reads() -> None:
    expression = compile_expression("concat(lower(name), '@', domain) + suffix", where=WHERE)
    assert expression.columns == frozenset({"name", "domain", "suffix"})
    assert expression.column is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id + 1", 8),
        ("id - 10", -3),
        ("id * 2", 14),
        ("id / 2", 3.5),
        ("id % 4", 3),
        ("-id", -7),
        ("amount * 2", Decimal("25.00")),
        ("ratio + 1", 1.5),
        ("status + '!'", "active!"),
        ("'n' + str(id)", "n7"),
    ],
)
def test_arithmetic_and_string_concatenation_follow_python(text: str, expected: object) -> None:
    assert evaluate(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lower(status)", "active"),
        ("upper(status)", "ACTIVE"),
        ("trim(name)", "Ada Lovelace"),
        ("str(amount)", "12.50"),
        ("int('42')", 42),
        ("int(amount)", 12),
        ("float('2.5')", 2.5),
        ("round(ratio * 3)", 2),
        ("round(amount, 1)", Decimal("12.5")),
        ("len(status)", 6),
        ("len(tags)", 2),
        ("concat('#', id, '-', status)", "#7-active"),
        ("coalesce(email, status)", "active"),
    ],
)
def test_functions_compute_their_documented_results(text: str, expected: object) -> None:
    assert evaluate(text) == expected


@pytest.mark.parametrize("function", ["lower", "upper", "trim", "str", "int", "float", "len"])
def test_functions_of_a_null_are_null_like_in_sql(function: str) -> None:
    assert evaluate(f"{function}(email)") is None


def test_concat_leaves_out_null_arguments() -> None:
    assert evaluate("concat(name, email, '|')") == "  Ada Lovelace |"


def test_coalesce_stops_at_the_first_non_null_value() -> None:
    # `missing` is not a column: it is never read because `id` is not null
    assert evaluate("coalesce(email, id, missing)") == 7
    assert evaluate("coalesce(email, email)") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id == 7", True),
        ("id != 7", False),
        ("id < 8 and id >= 7", True),
        ("0 < id <= 7", True),
        ("0 < id < 5", False),
        ("email is None", True),
        ("name is not None", True),
        ("status in ['active', 'trial']", True),
        ("status not in ('active',)", False),
        ("id in (-1, 7)", True),
        ("not active", False),
        ("email or 'none'", "none"),
        ("status and id", 7),
    ],
)
def test_comparisons_and_boolean_logic_follow_python(text: str, expected: object) -> None:
    assert evaluate(text) == expected


# --------------------------------------------------------------------------- refused at compile


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("name.__class__", "attribute access"),
        ("tags[0]", "subscripts"),
        ("(lambda: 1)()", "only the functions"),
        ("lambda: 1", "lambdas"),
        ("[t for t in tags]", "comprehensions"),
        ("f'{name}'", "f-strings"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("__import__('os')", "unknown function '__import__'"),
        ("eval('1')", "unknown function 'eval'"),
        ("id ** 2", "operator '**'"),
        ("id // 2", "operator '//'"),
        ("id if active else 0", "conditional expressions"),
        ("(x := 1)", "assignments"),
        ("{'a': 1}", "dict literals"),
        ("[1, 2]", "list literals"),
        ("status in tags", "'in' needs a literal list or tuple"),
        ("status in [name]", "only literals"),
        ("id is 7", "only compare with None"),
        ("lower(status, 'x')", "lower() takes 1 argument"),
        ("round()", "round() takes 1 to 2 argument"),
        ("coalesce()", "coalesce() needs at least one argument"),
        ("upper(s=status)", "no keyword arguments"),
        ("b'bytes'", "bytes literals"),
        ("~id", "bitwise operators"),
    ],
)
def test_forbidden_constructs_are_config_errors_naming_the_key_and_the_text(
    text: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_expression(text, where=WHERE)
    message = str(caught.value)
    assert message.startswith(WHERE + ":")
    assert reason in message
    assert repr(text) in message


@pytest.mark.parametrize("text", ["id +", "status ==", "and", "lower(", "id = 1", "a; b"])
def test_a_syntax_error_is_a_config_error_naming_the_key_and_the_text(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid expression") as caught:
        compile_expression(text, where=WHERE)
    assert WHERE in str(caught.value)
    assert repr(text) in str(caught.value)


def test_an_empty_expression_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=f"{WHERE}: empty expression"):
        compile_expression("   ", where=WHERE)


def test_an_unknown_function_error_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: coalesce, concat, float"):
        compile_expression("titlecase(name)", where=WHERE)


def test_an_absurdly_nested_expression_is_refused() -> None:
    text = "(" * (MAX_DEPTH + 5) + "id" + " + 1)" * (MAX_DEPTH + 5)
    with pytest.raises(ConfigError, match="nested deeper"):
        compile_expression(text, where=WHERE)


# --------------------------------------------------------------------------- failures at evaluation


def test_a_missing_column_is_a_mapping_error_naming_the_column() -> None:
    expression = compile_expression("lower(nickname)", where=WHERE)
    with pytest.raises(MappingError, match="column 'nickname' is not in the row") as caught:
        expression({"id": 1, "name": "x"})
    assert WHERE in str(caught.value)
    assert "id, name" in str(caught.value)


def test_a_missing_column_on_the_fast_path_is_a_mapping_error_too() -> None:
    with pytest.raises(MappingError, match="column 'nickname'"):
        compile_expression("nickname", where=WHERE)({"id": 1})


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("status + 1", "'active' (str) and 1 (int)"),
        ("email + 1", "None (NoneType) and 1 (int)"),
        ("status * 3", "'active' (str) and 3 (int)"),
        ("id < status", "7 (int) with 'active' (str)"),
        ("id / 0", "7 (int) and 0 (int)"),
        ("int(status)", "'active' (str)"),
        ("lower(id)", "7 (int)"),
        ("-status", "'active' (str)"),
        ("amount + ratio", "Decimal('12.50') (Decimal) and 0.5 (float)"),
    ],
)
def test_a_type_error_is_a_mapping_error_naming_the_expression_and_the_values(
    text: str, shown: str
) -> None:
    with pytest.raises(MappingError) as caught:
        evaluate(text)
    message = str(caught.value)
    assert repr(text) in message
    assert shown in message


# --------------------------------------------------------------------------- properties

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
)
rows = st.dictionaries(st.sampled_from(["a", "b", "c"]), values)

leaves = st.one_of(
    st.sampled_from(["a", "b", "c", "1", "0", "-2", "2.5", "'x'", "''", "None", "True"]),
)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(
        children,
        st.sampled_from(["+", "-", "*", "/", "%", "==", "!=", "<", ">=", "and", "or"]),
        children,
    ).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
    unary = st.tuples(st.sampled_from(["not ", "-"]), children).map(lambda t: f"({t[0]}({t[1]}))")
    call = st.tuples(
        st.sampled_from(["lower", "upper", "trim", "str", "int", "float", "round", "len"]),
        children,
    ).map(lambda t: f"{t[0]}({t[1]})")
    variadic = st.tuples(
        st.sampled_from(["concat", "coalesce"]), st.lists(children, min_size=1, max_size=3)
    ).map(lambda t: f"{t[0]}({', '.join(t[1])})")
    tests = children.map(lambda c: f"({c} is None)") | children.map(
        lambda c: f"({c} in [1, 'x', None])"
    )
    return binary | unary | call | variadic | tests


expressions = st.recursive(leaves, _combine, max_leaves=8)


def _value_or_error(expression: Expression, row: dict[str, Any]) -> object:
    """The expression's value, or the MappingError it raised (anything else propagates)."""
    try:
        return expression(row)
    except MappingError as exc:
        return exc


def _expression_or_error(text: str) -> Expression | ConfigError:
    try:
        return compile_expression(text, where=WHERE)
    except ConfigError as exc:
        return exc


@settings(max_examples=300, deadline=None)
@given(text=expressions, row=rows)
def test_evaluation_never_raises_anything_but_a_mapping_error(
    text: str, row: dict[str, Any]
) -> None:
    outcome = _value_or_error(compile_expression(text, where=WHERE), row)
    if isinstance(outcome, MappingError):
        assert str(outcome).startswith(WHERE + ":")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40))
def test_compiling_any_text_either_succeeds_or_is_a_config_error(text: str) -> None:
    outcome = _expression_or_error(text)
    if isinstance(outcome, ConfigError):
        assert str(outcome).startswith(WHERE + ":")
    else:
        assert outcome.text == text.strip()
