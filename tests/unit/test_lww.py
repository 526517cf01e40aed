"""Properties of the last-writer-wins rules (``mappers.lww``), generated with Hypothesis."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from mappers.entity import EntityDelete, EntityOp, EntityUpsert, Version
from mappers.lww import (
    Held,
    Verdict,
    converged,
    decide,
    echo_held,
    echo_token,
    inbound_wins,
    snapshot_version,
    source_version,
    step,
)
from tests.unit.events import table_event


class Row(BaseModel):
    value: int


versions = st.builds(source_version, st.integers(0, 2**40), st.integers(0, 2**20))


@st.composite
def histories(draw: st.DrawFn) -> list[EntityOp]:
    """A key's operations with distinct versions (one per source change), any kinds."""
    chosen = draw(st.lists(versions, min_size=1, max_size=12, unique=True))
    ops: list[EntityOp] = []
    for number, version in enumerate(chosen):
        if draw(st.booleans()):
            ops.append(EntityUpsert("contact", "1", version, Row(value=number)))
        else:
            ops.append(EntityDelete("contact", "1", version))
    return ops


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[EntityOp], list[EntityOp]]:
    """A history, and its deliveries in any order with duplicates (replays, redeliveries)."""
    ops = draw(histories())
    extra = draw(st.lists(st.sampled_from(ops), max_size=12))
    arrived = draw(st.permutations([*ops, *extra]))
    return ops, list(arrived)


def _naive_state(arrived: list[EntityOp]) -> tuple[Held | None, EntityOp | None]:
    """A target that trusts the sink: it applies in arrival order what ``step`` lets through."""
    held: Held | None = None
    present: EntityOp | None = None
    for op in arrived:
        verdict, held = step(held, op)
        if verdict is Verdict.APPLY:
            present = op
    return held, present


@given(deliveries())
def test_any_delivery_order_with_duplicates_ends_with_the_last_source_write(
    case: tuple[list[EntityOp], list[EntityOp]],
) -> None:
    ops, arrived = case
    held, present = _naive_state(arrived)
    last = converged(ops)
    assert present == last
    assert last is not None and held == Held(last.version, isinstance(last, EntityDelete))


@given(deliveries())
def test_what_a_target_holds_only_moves_forward(
    case: tuple[list[EntityOp], list[EntityOp]],
) -> None:
    _, arrived = case
    held: Held | None = None
    for op in arrived:
        before = held
        verdict, held = step(held, op)
        assert held is not None
        assert before is None or held.version >= before.version
        assert (verdict is Verdict.APPLY) == (before is None or op.version > before.version)


@given(versions, versions)
def test_decide_is_a_total_order_with_equal_as_duplicate(a: Version, b: Version) -> None:
    verdict = decide(a, b)
    assert verdict is {-1: Verdict.OLDER, 0: Verdict.DUPLICATE, 1: Verdict.APPLY}[(b > a) - (b < a)]
    assert decide(None, b) is Verdict.APPLY


@given(
    st.integers(0, 2**40),
    st.lists(st.integers(0, 2**20), min_size=2, max_size=8, unique=True),
    st.lists(st.integers(0, 2**62), min_size=8, max_size=8),
)
def test_changes_of_one_transaction_are_ordered_by_position_whatever_the_column_says(
    lsn: int, positions: list[int], stamps: list[int]
) -> None:
    events = [
        table_event(
            "customers",
            "d" if n % 2 else "u",
            after=None if n % 2 else {"id": 1, "updated_at": stamps[n]},
            key={"id": 1},
            lsn=lsn,
            seq=seq,
            ts_us=stamps[-1 - n],
        )
        for n, seq in enumerate(positions)
    ]
    ordered = sorted(events, key=lambda e: e.version("updated_at"))
    assert [e.seq for e in ordered] == sorted(positions)


@given(st.integers(0, 2**40), st.integers(1, 2**20), st.integers(0, 2**20))
def test_a_later_commit_is_newer_than_every_change_of_an_earlier_one(
    lsn: int, gap: int, seq: int
) -> None:
    earlier = source_version(lsn, seq + 1000)
    later = source_version(lsn + gap, seq)
    assert later > earlier
    assert snapshot_version(lsn + gap, seq) == later


@given(st.one_of(st.none(), st.integers(-(2**62), 2**62)), st.integers(-(2**62), 2**62))
def test_an_inbound_write_wins_only_when_strictly_newer_and_ties_lose(
    held: int | None, incoming: int
) -> None:
    assert inbound_wins(held, incoming) == (held is None or incoming > held)
    if held is not None:
        assert not inbound_wins(held, held)


@given(versions)
def test_version_bytes_order_is_version_order(a: Version) -> None:
    b = Version.from_lsn(a.lsn + 1, 0)
    assert (a.to_bytes() < b.to_bytes()) == (a < b)
    assert Version.from_bytes(a.to_bytes()) == a


def test_an_echo_token_names_its_base_and_zero_means_none_was_given() -> None:
    v1, v2 = source_version(100, 0), source_version(100, 1)
    assert echo_token(None) == 0
    assert echo_token(b"") != 0
    assert echo_token(v1.to_bytes()) != echo_token(v2.to_bytes())
    assert 0 < echo_token(v1.to_bytes()) < 2**63  # fits a replication origin's LSN
    assert echo_held(echo_token(v1.to_bytes()), v1)
    assert not echo_held(echo_token(v1.to_bytes()), v2)
    assert echo_held(echo_token(b""), None)
    assert not echo_held(echo_token(b""), v1)
    assert echo_held(0, v2)  # no base given: treated as held (never sent back)


@dataclass
class _Crm:
    """An external system: its own edits, and cdcsync's writes applied in version order."""

    value: str = "initial"
    held: Version | None = None  # the last cdcsync version it accepted


@dataclass
class _World:
    """The database, the external system, the inbound queue and the sink's delivery."""

    time: int = 0
    value: str = "initial"
    updated_at: int = 0
    log: list[tuple[Version, str, int]] = field(default_factory=list)  # (version, value, token)
    queue: list[tuple[str, int, int]] = field(default_factory=list)  # (value, edit time, token)
    delivered: int = 0
    stored: Version | None = None  # the sink's last delivered version
    crm: _Crm = field(default_factory=_Crm)

    def app_write(self, value: str) -> None:
        self.time += 1
        self.value, self.updated_at = value, self.time
        self.log.append((source_version(len(self.log) + 1, 0), value, 0))

    def crm_edit(self, value: str) -> None:
        self.time += 1
        self.crm.value = value
        base = b"" if self.crm.held is None else self.crm.held.to_bytes()
        self.queue.append((value, self.time, echo_token(base)))

    def apply_inbound(self) -> None:
        value, edited_at, token = self.queue.pop(0)
        if inbound_wins(self.updated_at, edited_at):
            self.value, self.updated_at = value, edited_at
            self.log.append((source_version(len(self.log) + 1, 0), value, token))

    def deliver(self) -> None:
        version, value, token = self.log[self.delivered]
        self.delivered += 1
        if token and echo_held(token, self.stored):
            return  # the external system holds its own write
        self.stored = version
        if self.crm.held is None or version > self.crm.held:
            self.crm.value, self.crm.held = value, version


@given(st.lists(st.sampled_from(["app", "edit", "apply", "deliver"]), max_size=40))
def test_the_external_system_ends_with_the_database_row_whatever_the_interleaving(
    steps: list[str],
) -> None:
    """Application writes, edits made in the external system (posted with their base),
    inbound applies and the sink's deliveries in any interleaving: once everything is
    applied and delivered, the external system holds what the database holds."""
    world = _World()
    for number, action in enumerate(steps):
        if action == "app":
            world.app_write(f"app{number}")
        elif action == "edit":
            world.crm_edit(f"crm{number}")
        elif action == "apply" and world.queue:
            world.apply_inbound()
        elif action == "deliver" and world.delivered < len(world.log):
            world.deliver()
    while world.queue:
        world.apply_inbound()
    while world.delivered < len(world.log):
        world.deliver()
    assert world.crm.value == world.value
