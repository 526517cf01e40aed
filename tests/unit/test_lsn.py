from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.core.lsn import Lsn


def test_lsn_parses_postgres_text_form_and_prints_it_back() -> None:
    lsn = Lsn.parse("16/B374D848")
    assert int(lsn) == (0x16 << 32) | 0xB374D848
    assert str(lsn) == "16/B374D848"


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_lsn_text_form_round_trips_for_every_value(value: int) -> None:
    assert Lsn.parse(str(Lsn(value))) == value


@pytest.mark.parametrize("text", ["", "16", "/1", "1/", "x/1", "1/100000000", "-1/0"])
def test_malformed_lsn_text_is_rejected_with_the_text_in_the_message(text: str) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        Lsn.parse(text)


def test_lsns_order_like_wal_positions() -> None:
    assert Lsn.parse("0/FFFFFFFF") < Lsn.parse("1/0") < Lsn.parse("1/1")
