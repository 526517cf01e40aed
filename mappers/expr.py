"""A small, safe expression language for declarative mappings.

Expressions are Python expression syntax, parsed once with :mod:`ast` and compiled into
nested closures; nothing is ever passed to ``eval`` or ``exec``. What is allowed:

- names: the row's columns (``email``, ``customer_id``);
- literals: strings, integers, floats, ``True``, ``False``, ``None``;
- comparisons ``== != < <= > >=`` (chains like ``0 < x <= 10`` too), ``x is None``,
  ``x is not None``, and ``x in [...]`` / ``x not in (...)`` against a list or tuple of
  literals;
- ``and``, ``or``, ``not`` (Python's semantics: ``a or b`` is ``a`` when ``a`` is true);
- arithmetic ``+ - * / %`` and unary ``-``/``+`` on numbers (int, float, Decimal), and
  ``+`` on two strings (concatenation);
- functions: ``lower``, ``upper``, ``trim``, ``str``, ``int``, ``float``, ``len`` (one
  argument), ``round`` (one or two), ``concat(*args)`` (joins the text of the non-null
  arguments) and ``coalesce(*args)`` (the first non-null argument; later ones are not
  evaluated).

Nulls: like SQL, ``lower upper trim str int float round len`` of ``None`` is ``None``,
so a nullable column maps to null instead of failing; operators do not propagate
nulls (``None + 1`` is an error: use ``coalesce``).

Invariants:
- ``compile_expression`` rejects anything outside the whitelist (attribute access,
  subscripts, lambdas, comprehensions, f-strings, unknown functions, keyword arguments,
  nesting deeper than ``MAX_DEPTH``) with a ``ConfigError`` naming ``where`` and the
  offending text; a compiled ``Expression`` can therefore only read the row it is given.
- Evaluating an ``Expression`` raises nothing but ``MappingError`` (naming the
  expression, the column or sub-expression and the values involved) for any row whose
  values are ``None``, ``bool``, ``int``, ``float``, ``Decimal``, ``str`` or
  containers of these.
- A bare column name compiles to a single dictionary lookup (no tree walk per row).
"""

from __future__ import annotations

import ast
import keyword
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from cdc.core.errors import ConfigError, MappingError

Row = Mapping[str, Any]
Evaluate = Callable[[Row], Any]

MAX_DEPTH: Final = 64
"""The deepest expression tree accepted (keeps evaluation far from the recursion limit)."""

_EVAL_ERRORS: Final = (TypeError, ValueError, ArithmeticError)
_NUMBER: Final = (int, float, Decimal)
_LITERAL: Final = (str, int, float, bool, type(None))


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled expression: call it with a row to get its value.

    ``columns`` holds every column name the expression reads; ``column`` is that name
    when the whole expression is one bare column, else ``None``.
    """

    text: str
    where: str
    columns: frozenset[str]
    column: str | None
    evaluate: Evaluate = field(repr=False, compare=False)

    def __call__(self, row: Row) -> Any:
        return self.evaluate(row)


def compile_expression(text: str, *, where: str) -> Expression:
    """Compile ``text``; ``where`` (a config key such as ``integrations.crm.mapper.where``)
    names it in every error message."""
    source = text.strip()
    if not source:
        raise ConfigError(f"{where}: empty expression")
    if source.isidentifier() and not keyword.iskeyword(source):
        return Expression(
            text=source,
            where=where,
            columns=frozenset((source,)),
            column=source,
            evaluate=_lookup(source, where=where, text=source),
        )
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        detail = exc.msg if not exc.offset else f"{exc.msg} at column {exc.offset}"
        raise ConfigError(f"{where}: invalid expression {text!r}: {detail}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ConfigError(f"{where}: invalid expression {text!r}: {exc}") from None
    compiler = _Compiler(source, where=where)
    evaluate = compiler.compile(tree.body, depth=0)
    return Expression(
        text=source,
        where=where,
        columns=frozenset(compiler.columns),
        column=None,
        evaluate=evaluate,
    )


# --------------------------------------------------------------------------- helpers


def describe(value: object) -> str:
    """A value for an error message: its repr (shortened) and its type."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _lookup(name: str, *, where: str, text: str) -> Evaluate:
    def lookup(row: Row) -> Any:
        try:
            return row[name]
        except KeyError:
            known = ", ".join(sorted(map(str, row))[:20]) or "no columns"
            raise MappingError(
                f"{where}: column {name!r} is not in the row (expression {text!r}; "
                f"the row has {known})"
            ) from None

    return lookup


def _is_number(value: object) -> bool:
    return isinstance(value, _NUMBER)


def _lower(value: Any) -> Any:
    if not isinstance(value, str):
        raise TypeError("lower() needs a string")
    return value.lower()


def _upper(value: Any) -> Any:
    if not isinstance(value, str):
        raise TypeError("upper() needs a string")
    return value.upper()


def _trim(value: Any) -> Any:
    if not isinstance(value, str):
        raise TypeError("trim() needs a string")
    return value.strip()


def _str(value: Any) -> Any:
    return value if isinstance(value, str) else str(value)


def _int(value: Any) -> Any:
    if not isinstance(value, str | int | float | Decimal):
        raise TypeError("int() needs a number or a string")
    return int(value)


def _float(value: Any) -> Any:
    if not isinstance(value, str | int | float | Decimal):
        raise TypeError("float() needs a number or a string")
    return float(value)


def _round(value: Any, digits: Any = None) -> Any:
    if not _is_number(value):
        raise TypeError("round() needs a number")
    if digits is None:
        return round(value)
    if not isinstance(digits, int):
        raise TypeError("round()'s digits must be an integer")
    return round(value, digits)


def _len(value: Any) -> Any:
    if not isinstance(value, str | list | tuple | dict):
        raise TypeError("len() needs a string or a list")
    return len(value)


def _concat(*values: Any) -> Any:
    return "".join(v if isinstance(v, str) else str(v) for v in values if v is not None)


# name -> (fewest arguments, most arguments or None, implementation, null in -> null out)
_FUNCTIONS: Final[dict[str, tuple[int, int | None, Callable[..., Any], bool]]] = {
    "lower": (1, 1, _lower, True),
    "upper": (1, 1, _upper, True),
    "trim": (1, 1, _trim, True),
    "str": (1, 1, _str, True),
    "int": (1, 1, _int, True),
    "float": (1, 1, _float, True),
    "round": (1, 2, _round, True),
    "len": (1, 1, _len, True),
    "concat": (1, None, _concat, False),
}
_KNOWN_FUNCTIONS: Final = sorted([*_FUNCTIONS, "coalesce"])

_COMPARE: Final[dict[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}

_ARITHMETIC: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Mod: lambda a, b: a % b,
}

_OPERATOR_SYMBOLS: Final[dict[type[ast.operator], str]] = {
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
}

_FORBIDDEN: Final[dict[type[ast.AST], str]] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "f-strings",
    ast.IfExp: "conditional expressions",
    ast.NamedExpr: "assignments",
    ast.Starred: "starred arguments",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Dict: "dict literals",
    ast.Set: "set literals",
    ast.List: "list literals outside 'in'",
    ast.Tuple: "tuple literals outside 'in'",
    ast.Slice: "slices",
}


# --------------------------------------------------------------------------- compiler


class _Compiler:
    """Turns a whitelisted ``ast`` tree into closures, collecting the columns it reads."""

    def __init__(self, text: str, *, where: str) -> None:
        self.text = text
        self.where = where
        self.columns: set[str] = set()

    # ----- messages

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or ast.unparse(node)

    def reject(self, node: ast.AST, reason: str) -> ConfigError:
        return ConfigError(
            f"{self.where}: {reason}: {self.segment(node)!r} in expression {self.text!r}"
        )

    def failure(self, node: ast.AST, reason: str) -> MappingError:
        return MappingError(
            f"{self.where}: {self.segment(node)!r} {reason} (expression {self.text!r})"
        )

    # ----- dispatch

    def compile(self, node: ast.expr, *, depth: int) -> Evaluate:
        if depth > MAX_DEPTH:
            raise self.reject(node, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, ast.Name):
            self.columns.add(node.id)
            return _lookup(node.id, where=self.where, text=self.text)
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.BoolOp):
            return self.bool_op(node, depth=depth)
        if isinstance(node, ast.UnaryOp):
            return self.unary_op(node, depth=depth)
        if isinstance(node, ast.BinOp):
            return self.bin_op(node, depth=depth)
        if isinstance(node, ast.Compare):
            return self.compare(node, depth=depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth=depth)
        what = _FORBIDDEN.get(type(node), f"{type(node).__name__} expressions")
        raise self.reject(node, f"{what} not allowed")

    def literal(self, node: ast.expr) -> Any:
        """The value of a literal: a constant, or a negated number constant."""
        if isinstance(node, ast.Constant) and isinstance(node.value, _LITERAL):
            return node.value
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub | ast.UAdd)
            and isinstance(node.operand, ast.Constant)
            and isinstance(node.operand.value, int | float)
            and not isinstance(node.operand.value, bool)
        ):
            value = node.operand.value
            return -value if isinstance(node.op, ast.USub) else value
        raise self.reject(node, "only literals allowed here")

    # ----- node kinds

    def constant(self, node: ast.Constant) -> Evaluate:
        if not isinstance(node.value, _LITERAL):
            raise self.reject(node, f"{type(node.value).__name__} literals not allowed")
        value = node.value
        return lambda _row: value

    def truth(self, node: ast.AST, value: Any) -> bool:
        try:
            return bool(value)
        except _EVAL_ERRORS:
            raise self.failure(node, f"has no truth value: {describe(value)}") from None

    def bool_op(self, node: ast.BoolOp, *, depth: int) -> Evaluate:
        parts = [(v, self.compile(v, depth=depth + 1)) for v in node.values]
        stop_when = isinstance(node.op, ast.Or)  # `or` stops at a true value

        def evaluate(row: Row) -> Any:
            value: Any = None
            for part, fn in parts:
                value = fn(row)
                if self.truth(part, value) is stop_when:
                    return value
            return value

        return evaluate

    def unary_op(self, node: ast.UnaryOp, *, depth: int) -> Evaluate:
        operand = self.compile(node.operand, depth=depth + 1)
        if isinstance(node.op, ast.Not):
            return lambda row: not self.truth(node.operand, operand(row))
        if isinstance(node.op, ast.Invert):
            raise self.reject(node, "bitwise operators not allowed")
        negate = isinstance(node.op, ast.USub)

        def evaluate(row: Row) -> Any:
            value = operand(row)
            if not _is_number(value):
                raise self.failure(node, f"needs a number, got {describe(value)}")
            try:
                return -value if negate else +value
            except _EVAL_ERRORS as exc:
                raise self.failure(node, f"failed on {describe(value)}: {_reason(exc)}") from None

        return evaluate

    def bin_op(self, node: ast.BinOp, *, depth: int) -> Evaluate:
        op = _ARITHMETIC.get(type(node.op))
        if op is None:
            symbol = _OPERATOR_SYMBOLS.get(type(node.op), type(node.op).__name__)
            raise self.reject(node, f"operator {symbol!r} not allowed")
        left = self.compile(node.left, depth=depth + 1)
        right = self.compile(node.right, depth=depth + 1)
        concatenates = isinstance(node.op, ast.Add)

        def evaluate(row: Row) -> Any:
            a = left(row)
            b = right(row)
            numbers = _is_number(a) and _is_number(b)
            if not numbers and not (concatenates and isinstance(a, str) and isinstance(b, str)):
                need = "two numbers or two strings" if concatenates else "two numbers"
                raise self.failure(node, f"needs {need}, got {describe(a)} and {describe(b)}")
            try:
                return op(a, b)
            except _EVAL_ERRORS as exc:
                raise self.failure(
                    node,
                    f"failed with {describe(a)} and {describe(b)}: {_reason(exc)}",
                ) from None

        return evaluate

    def compare(self, node: ast.Compare, *, depth: int) -> Evaluate:
        first = self.compile(node.left, depth=depth + 1)
        steps: list[tuple[Callable[[Any, Any], Any], Evaluate]] = []
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            steps.append(self.comparison(node, op, comparator, depth=depth))

        def evaluate(row: Row) -> Any:
            a = first(row)
            for test, fn in steps:
                b = fn(row)
                try:
                    outcome = bool(test(a, b))
                except _EVAL_ERRORS as exc:
                    raise self.failure(
                        node,
                        f"cannot compare {describe(a)} with {describe(b)}: {_reason(exc)}",
                    ) from None
                if not outcome:
                    return False
                a = b
            return True

        return evaluate

    def comparison(
        self, node: ast.Compare, op: ast.cmpop, comparator: ast.expr, *, depth: int
    ) -> tuple[Callable[[Any, Any], Any], Evaluate]:
        if isinstance(op, ast.Is | ast.IsNot):
            if not (isinstance(comparator, ast.Constant) and comparator.value is None):
                raise self.reject(node, "'is' and 'is not' only compare with None")
            if isinstance(op, ast.Is):
                return (lambda a, _b: a is None), (lambda _row: None)
            return (lambda a, _b: a is not None), (lambda _row: None)
        if isinstance(op, ast.In | ast.NotIn):
            if not isinstance(comparator, ast.List | ast.Tuple):
                raise self.reject(node, "'in' needs a literal list or tuple")
            options = tuple(self.literal(e) for e in comparator.elts)
            if isinstance(op, ast.In):
                return (lambda a, b: any(a == o for o in b)), (lambda _row: options)
            return (lambda a, b: not any(a == o for o in b)), (lambda _row: options)
        test = _COMPARE[type(op)]
        return test, self.compile(comparator, depth=depth + 1)

    def call(self, node: ast.Call, *, depth: int) -> Evaluate:
        if isinstance(node.func, ast.Attribute):
            raise self.reject(node, "attribute access not allowed (no methods)")
        if not isinstance(node.func, ast.Name):
            raise self.reject(node, "only the functions " + ", ".join(_KNOWN_FUNCTIONS))
        name = node.func.id
        if name != "coalesce" and name not in _FUNCTIONS:
            raise self.reject(
                node, f"unknown function {name!r} (known: {', '.join(_KNOWN_FUNCTIONS)})"
            )
        if node.keywords:
            raise self.reject(node, f"{name}() takes no keyword arguments")
        args = [self.compile(a, depth=depth + 1) for a in node.args]
        if name == "coalesce":
            if not args:
                raise self.reject(node, "coalesce() needs at least one argument")
            return _coalesce(args)
        fewest, most, impl, nullable = _FUNCTIONS[name]
        if len(args) < fewest or (most is not None and len(args) > most):
            count = str(fewest) if most == fewest else f"{fewest} or more"
            if most is not None and most != fewest:
                count = f"{fewest} to {most}"
            raise self.reject(node, f"{name}() takes {count} argument(s), not {len(args)}")

        def evaluate(row: Row) -> Any:
            values = [fn(row) for fn in args]
            if nullable and values[0] is None:
                return None
            try:
                return impl(*values)
            except _EVAL_ERRORS as exc:
                shown = ", ".join(describe(v) for v in values)
                raise self.failure(node, f"failed on {shown}: {_reason(exc)}") from None

        return evaluate


def _coalesce(args: list[Evaluate]) -> Evaluate:
    def evaluate(row: Row) -> Any:
        for fn in args:
            value = fn(row)
            if value is not None:
                return value
        return None

    return evaluate
