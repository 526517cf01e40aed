"""Loading mappers named in the config: ``module:function`` references and declarative mappings.

``load_mapper(spec, integration=...)`` turns a config's mapper spec into a ``Mapper``:

- a reference to a function taking ``(event, ctx)`` or just ``(event)`` (the signature is
  inspected once, at load); it may return ``None``, one ``EntityUpsert``/``EntityDelete``
  or an iterable (a list, a generator...) of them;
- a ``DeclarativeMapping`` (see ``mappers.declarative``).

Invariants:
- Every problem found at load (bad reference, missing module or attribute, import
  failure, not callable, unusable signature) is a ``ConfigError`` naming the reference.
- A loaded mapper always returns a tuple of entity operations. It raises only
  ``RelationPending`` (the event waits) or ``MappingError`` (the event is
  dead-lettered): anything else a user's mapper raises, or returns that is not an
  entity operation, becomes a ``MappingError`` naming the mapper and the event's
  origin, with the original exception as its cause.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cdc.config import DeclarativeMapping
from cdc.core.errors import ConfigError, MappingError, RelationPending
from mappers import declarative
from mappers.entity import EntityDelete, EntityOp, EntityUpsert, MapContext, Mapper, TableEvent
from mappers.references import load_callable


def load_mapper(spec: str | DeclarativeMapping, *, integration: str) -> Mapper:
    """The mapper of ``integrations.<integration>.mapper``; ``ConfigError`` if unusable."""
    if isinstance(spec, DeclarativeMapping):
        return LoadedMapper(
            name=f"integrations.{integration}.mapper",
            function=declarative.declarative_mapper(spec, integration=integration),
            takes_context=True,
        )
    function = load_callable(spec)
    if not callable(function):
        raise ConfigError(f"{spec}: {type(function).__name__} object is not callable")
    return LoadedMapper(name=spec, function=function, takes_context=_takes_context(spec, function))


@dataclass(frozen=True, slots=True)
class LoadedMapper:
    """A user's mapper behind the ``Mapper`` contract (see the module docstring)."""

    name: str
    function: Callable[..., object] = field(repr=False)
    takes_context: bool

    def __call__(self, event: TableEvent, ctx: MapContext) -> tuple[EntityOp, ...]:
        try:
            result = self.function(event, ctx) if self.takes_context else self.function(event)
            return self._operations(result, event)
        except (RelationPending, MappingError):
            raise
        except Exception as exc:
            raise MappingError(
                f"mapper {self.name} failed on {event.origin}: {type(exc).__name__}: {exc}"
            ) from exc

    def _operations(self, result: object, event: TableEvent) -> tuple[EntityOp, ...]:
        if result is None:
            return ()
        if isinstance(result, EntityUpsert | EntityDelete):
            return (result,)
        if not isinstance(result, Iterable) or isinstance(result, str | bytes | Mapping):
            raise MappingError(
                f"mapper {self.name} returned a {type(result).__name__} for {event.origin}, "
                "not entity operations"
            )
        ops = tuple(result)
        for op in ops:
            if not isinstance(op, EntityUpsert | EntityDelete):
                raise MappingError(
                    f"mapper {self.name} yielded a {type(op).__name__} for {event.origin}, "
                    "not an EntityUpsert or EntityDelete"
                )
        return ops


def _takes_context(ref: str, function: Callable[..., object]) -> bool:
    """Whether ``function`` is called as ``(event, ctx)`` (else ``(event)``)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return True  # builtins and extension functions: assume the full contract
    params = list(signature.parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    keyword_only = [
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    if keyword_only:
        raise ConfigError(f"{ref}: a mapper cannot require keyword argument {keyword_only[0]!r}")
    if len(required) > 2:
        raise ConfigError(f"{ref}: a mapper takes (event, ctx) or (event), not {signature}")
    if len(positional) >= 2 or varargs:
        return True
    if len(positional) == 1:
        return False
    raise ConfigError(f"{ref}: a mapper takes (event, ctx) or (event), not {signature}")
