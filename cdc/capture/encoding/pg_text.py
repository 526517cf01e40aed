"""Parsers for PostgreSQL's text output forms, and the calendar arithmetic they need.

pgoutput (text mode) sends every column value as exactly what ``SELECT col::text``
returns. This module turns those strings into plain numbers and strings; it knows
nothing about Avro or Debezium (that policy lives in ``cdc.capture.encoding.type_mapping``).

Invariants:

- Pure functions, no I/O, no global state.
- Every parser raises ``ValueError`` (never anything else) for text it cannot read;
  ``cdc.capture.encoding.type_mapping`` turns that into a ``DecodeError`` naming the column type.
- The server is assumed to run with ``DateStyle = ISO`` and ``IntervalStyle = postgres``
  (both the defaults): dates look like ``2024-01-31`` / ``0044-03-15 BC``, intervals like
  ``1 year 2 mons -3 days +04:05:06.5``.
- Dates use the proleptic Gregorian calendar with astronomical year numbering
  (1 BC is year 0), over any year, not just Python's 1..9999.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from decimal import Decimal

MICROS_PER_SECOND = 1_000_000
MICROS_PER_DAY = 86_400 * MICROS_PER_SECOND
# Debezium's average month: 365.25 / 12 = 30.4375 days = 2,629,800 s, exactly.
MICROS_PER_AVERAGE_MONTH = 2_629_800 * MICROS_PER_SECOND


# --- calendar arithmetic (any year, astronomical numbering) -----------------------------


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (year 0 is 1 BC)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """The (year, month, day) of a day count since 1970-01-01; inverse of days_from_civil."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _micros_of_fraction(fraction: str | None) -> int:
    if not fraction:
        return 0
    return int((fraction + "00000")[:6])


def _check_date(year: int, month: int, day: int) -> None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise ValueError("month or day out of range")
    if civil_from_days(days_from_civil(year, month, day)) != (year, month, day):
        raise ValueError("no such day in that month")


# --- dates, times, timestamps -------------------------------------------------------------

_DATE = re.compile(r"(\d{4,})-(\d\d)-(\d\d)( BC)?")
_TIME = re.compile(r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?")
_OFFSET = r"(?:([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?)"
_TIMETZ = re.compile(r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?" + _OFFSET)
_TIMESTAMP = re.compile(
    r"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?" + _OFFSET + r"?( BC)?"
)


_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_EPOCH_NAIVE = _dt.datetime(1970, 1, 1)
_EPOCH_UTC = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_ONE_MICRO = _dt.timedelta(microseconds=1)


def parse_date(text: str) -> int:
    """``2024-01-31`` / ``0044-03-15 BC`` -> days since 1970-01-01."""
    if len(text) == 10 and text[4] == "-":  # fast path: years 1..9999 in the C library
        try:
            return _dt.date.fromisoformat(text).toordinal() - _EPOCH_ORDINAL
        except ValueError:
            pass
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError("not an ISO date")
    year_text, month_text, day_text, bc = match.groups()
    year = int(year_text)
    if bc:
        year = 1 - year
    month, day = int(month_text), int(day_text)
    _check_date(year, month, day)
    return days_from_civil(year, month, day)


def _time_of_day(hour: str, minute: str, second: str, fraction: str | None) -> int:
    h, m, s = int(hour), int(minute), int(second)
    if h > 24 or m > 59 or s > 59 or (h == 24 and (m or s or (fraction and int(fraction)))):
        raise ValueError("time of day out of range")
    return ((h * 60 + m) * 60 + s) * MICROS_PER_SECOND + _micros_of_fraction(fraction)


def parse_time(text: str) -> int:
    """``HH:MM:SS[.ffffff]`` -> microseconds since midnight (``24:00:00`` is a full day)."""
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError("not a time of day")
    return _time_of_day(*match.groups())


def _offset_seconds(
    sign: str | None, hours: str | None, minutes: str | None, seconds: str | None
) -> int:
    if sign is None or hours is None:
        return 0
    total = int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)
    return -total if sign == "-" else total


def parse_timetz(text: str) -> int:
    """``HH:MM:SS[.ffffff]±HH[:MM[:SS]]`` -> microseconds since midnight UTC, in [0, 1 day].

    The local time is shifted by its offset and wrapped into the UTC day; a value that
    lands exactly on the end of the day (``24:00:00+00``) stays a full day.
    """
    match = _TIMETZ.fullmatch(text)
    if match is None:
        raise ValueError("not a time with time zone")
    hour, minute, second, fraction, sign, oh, om, osec = match.groups()
    local = _time_of_day(hour, minute, second, fraction)
    utc = local - _offset_seconds(sign, oh, om, osec) * MICROS_PER_SECOND
    if utc == MICROS_PER_DAY:
        return utc
    return utc % MICROS_PER_DAY


def _timestamp_micros(text: str, *, with_zone: bool) -> int:
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError("not an ISO timestamp")
    (year_text, month_text, day_text, hour, minute, second, fraction) = match.groups()[:7]
    sign, oh, om, osec, bc = match.groups()[7:]
    if (sign is not None) != with_zone:
        raise ValueError("time zone offset missing" if with_zone else "unexpected time zone offset")
    year = int(year_text)
    if bc:
        year = 1 - year
    month, day = int(month_text), int(day_text)
    _check_date(year, month, day)
    of_day = _time_of_day(hour, minute, second, fraction)
    if of_day == MICROS_PER_DAY:
        raise ValueError("24:00:00 is not a valid time in a timestamp")
    local = days_from_civil(year, month, day) * MICROS_PER_DAY + of_day
    return local - _offset_seconds(sign, oh, om, osec) * MICROS_PER_SECOND


def _is_plain_timestamp(text: str) -> bool:
    # 'YYYY-MM-DD HH:MM:SS...' with no era suffix: Python's datetime can read it.
    return len(text) >= 19 and text[4] == "-" and text[10] == " " and text[-1] != "C"


def parse_timestamp(text: str) -> int:
    """``2024-01-31 10:00:00[.ffffff][ BC]`` -> microseconds since 1970-01-01 00:00:00."""
    if _is_plain_timestamp(text) and "+" not in text and text.count("-") == 2:
        try:
            return (_dt.datetime.fromisoformat(text) - _EPOCH_NAIVE) // _ONE_MICRO
        except ValueError:
            pass
    return _timestamp_micros(text, with_zone=False)


def parse_timestamptz(text: str) -> int:
    """``2024-01-31 10:00:00[.ffffff]±HH[:MM[:SS]][ BC]`` -> microseconds since the epoch (UTC)."""
    return _timestamp_micros(text, with_zone=True)


def timestamptz_to_utc_iso(text: str, *, fraction_digits: int | None = None) -> str:
    """A timestamptz text form -> the instant as ``2024-01-31T10:00:00.123456Z``."""
    if text[-3:] == "+00" and _is_plain_timestamp(text) and text[0] != "0":
        # Already UTC (capture's session runs in UTC): only the separators change.
        # PostgreSQL prints no trailing zeros in the fraction and no year 0.
        body = text[:-3]
        fraction = body[20:]
        if len(body) == 19 or (body[19] == "." and len(fraction) <= 6 and fraction.isdigit()):
            if fraction_digits is None:
                return body[:10] + "T" + body[11:] + "Z"
            if fraction_digits <= 0:
                return body[:10] + "T" + body[11:19] + "Z"
            digits = fraction.ljust(6, "0")[:fraction_digits]
            return body[:10] + "T" + body[11:19] + "." + digits + "Z"
    if _is_plain_timestamp(text):
        try:
            moment = _dt.datetime.fromisoformat(text)
            if moment.tzinfo is not None:
                utc = moment.astimezone(_dt.UTC).replace(tzinfo=None)
                if 1 <= utc.year <= 9999:
                    iso = utc.isoformat()
                    if utc.microsecond:
                        iso = iso[:-7]
                    return iso + _fraction_text(utc.microsecond, fraction_digits) + "Z"
        except (ValueError, OverflowError):
            pass
    return format_utc_timestamp(parse_timestamptz(text), fraction_digits=fraction_digits)


def _fraction_text(micros: int, digits: int | None) -> str:
    """``.ffffff`` for a sub-second part: exactly ``digits`` digits, or as few as needed."""
    if digits is None:
        if micros == 0:
            return ""
        return "." + f"{micros:06d}".rstrip("0")
    if digits <= 0:
        return ""
    return "." + f"{micros:06d}"[:digits].ljust(digits, "0")


def _iso_year(year: int) -> str:
    # ISO 8601 / java.time style: four digits in 0000..9999, else an explicit sign.
    if 0 <= year <= 9999:
        return f"{year:04d}"
    return f"{year:+05d}"


def format_utc_timestamp(micros: int, *, fraction_digits: int | None = None) -> str:
    """Epoch microseconds -> ``2024-01-31T10:00:00.123456Z`` (java.time's ISO form)."""
    days, of_day = divmod(micros, MICROS_PER_DAY)
    year, month, day = civil_from_days(days)
    seconds, sub = divmod(of_day, MICROS_PER_SECOND)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return (
        f"{_iso_year(year)}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
        f"{_fraction_text(sub, fraction_digits)}Z"
    )


def format_utc_time(micros: int) -> str:
    """Microseconds since midnight UTC -> ``10:00:00.5Z`` (``24:00:00Z`` for a full day)."""
    seconds, sub = divmod(micros, MICROS_PER_SECOND)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{hour:02d}:{minute:02d}:{second:02d}{_fraction_text(sub, None)}Z"


# --- intervals -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntervalValue:
    """An interval as PostgreSQL stores it: months, days and microseconds, each signed."""

    months: int
    days: int
    micros: int

    def approximate_micros(self) -> int:
        """Total microseconds with Debezium's month of 30.4375 days and day of 24 hours."""
        return self.months * MICROS_PER_AVERAGE_MONTH + self.days * MICROS_PER_DAY + self.micros

    def iso_string(self) -> str:
        """``P1Y2M3DT4H5M6.5S``: Debezium's io.debezium.time.Interval form (all fields present)."""
        years = int(self.months / 12)
        months = self.months - years * 12
        negative = self.micros < 0
        rest = -self.micros if negative else self.micros
        hours, rest = divmod(rest, 3600 * MICROS_PER_SECOND)
        minutes, rest = divmod(rest, 60 * MICROS_PER_SECOND)
        whole, sub = divmod(rest, MICROS_PER_SECOND)
        seconds = str(whole) + _fraction_text(sub, None)
        seconds_text = "-" + seconds if negative and seconds != "0" else seconds
        h = -hours if negative else hours
        m = -minutes if negative else minutes
        return f"P{years}Y{months}M{self.days}DT{h}H{m}M{seconds_text}S"


_INTERVAL_UNIT = re.compile(r"([+-]?\d+) (years?|mons?|days?)")
_INTERVAL_TIME = re.compile(r"([+-])?(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?")
_UNIT_MONTHS = {"year": 12, "years": 12, "mon": 1, "mons": 1}


def parse_interval(text: str) -> IntervalValue:
    """``1 year 2 mons -3 days +04:05:06.5`` (IntervalStyle postgres) -> IntervalValue."""
    months = days = micros = 0
    parts = text.split(" ")
    i = 0
    seen_time = False
    while i < len(parts):
        token = parts[i]
        if i + 1 < len(parts) and _INTERVAL_UNIT.fullmatch(f"{token} {parts[i + 1]}"):
            amount, unit = int(token), parts[i + 1]
            if unit.startswith("day"):
                days += amount
            else:
                months += amount * _UNIT_MONTHS[unit]
            i += 2
            continue
        match = _INTERVAL_TIME.fullmatch(token)
        if match is None or seen_time:
            raise ValueError("not an interval in IntervalStyle postgres")
        sign, hours, minutes, seconds, fraction = match.groups()
        if int(minutes) > 59 or int(seconds) > 59:
            raise ValueError("minutes or seconds out of range")
        value = (
            int(hours) * 3600 + int(minutes) * 60 + int(seconds)
        ) * MICROS_PER_SECOND + _micros_of_fraction(fraction)
        micros += -value if sign == "-" else value
        seen_time = True
        i += 1
    if not parts or parts == [""]:
        raise ValueError("empty interval")
    return IntervalValue(months=months, days=days, micros=micros)


# --- booleans, numbers, money, bytes ----------------------------------------------------------

_BOOLEANS = {"t": True, "f": False, "true": True, "false": False}


def parse_bool(text: str) -> bool:
    """``t`` / ``f`` (boolout; pgoutput's form) or ``true`` / ``false`` (a ::text cast)."""
    try:
        return _BOOLEANS[text]
    except KeyError:
        raise ValueError("expected 't' or 'f'") from None


_NUMERIC = re.compile(r"(-?)(\d+)(?:\.(\d+))?")


def parse_numeric_unscaled(text: str) -> tuple[int, int]:
    """``-123.4500`` -> (unscaled, scale) with trailing fractional zeros stripped: (-12345, 2).

    The scale never goes below zero (``100`` stays (100, 0)), as Debezium's
    VariableScaleDecimal does.
    """
    match = _NUMERIC.fullmatch(text)
    if match is None:
        raise ValueError("not a finite numeric")
    sign, whole, fraction = match.groups()
    fraction = (fraction or "").rstrip("0")
    digits = whole + fraction
    # int() refuses strings over sys.get_int_max_str_digits(); Decimal converts exactly.
    unscaled = int(digits) if len(digits) < 4000 else int(Decimal(digits))
    return (-unscaled if sign else unscaled), len(fraction)


def twos_complement_bytes(value: int) -> bytes:
    """Minimal big-endian two's-complement bytes of an integer (java.math.BigInteger's form)."""
    magnitude = value if value >= 0 else ~value
    return value.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True)


def parse_money(text: str, *, fraction_digits: int) -> str:
    """``-$1,234.56`` -> ``-1234.56``: the amount in plain notation.

    Currency symbols and group separators depend on ``lc_monetary``; money always
    prints its fraction digits, so the last ``fraction_digits`` digits are the fraction.
    """
    digits = "".join(ch for ch in text if "0" <= ch <= "9")
    if not digits:
        raise ValueError("no digits in a money value")
    sign = "-" if "-" in text or "(" in text else ""
    if fraction_digits <= 0:
        return sign + digits
    digits = digits.rjust(fraction_digits + 1, "0")
    return f"{sign}{digits[:-fraction_digits]}.{digits[-fraction_digits:]}"


def numeric_typmod(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of a numeric column's typmod; None when unconstrained."""
    if typmod < 4:
        return None
    packed = typmod - 4
    scale = ((packed & 0x7FF) ^ 1024) - 1024  # 11-bit signed scale (PostgreSQL 15+)
    return (packed >> 16) & 0xFFFF, scale


_OCTAL = re.compile(rb"\\([0-3][0-7][0-7])|\\\\")


def parse_bytea(text: str) -> bytes:
    r"""``\x00ff`` (bytea_output hex) or the escape format (``a\000\\``) -> bytes."""
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    raw = text.encode("utf-8")
    if b"\\" not in raw:
        return raw

    def unescape(match: re.Match[bytes]) -> bytes:
        octal = match.group(1)
        return bytes([int(octal, 8)]) if octal else b"\\"

    result = _OCTAL.sub(unescape, raw)
    if b"\\" in _OCTAL.sub(b"", raw):
        raise ValueError("stray backslash in escaped bytea")
    return result


# --- arrays --------------------------------------------------------------------------------------

_BOUNDS = re.compile(r"(?:\[-?\d+:-?\d+\])+=")


def parse_array(text: str, *, delimiter: str = ",") -> list[str | None]:
    r"""An array literal -> its elements in storage order; SQL NULL elements are None.

    Handles ``{}``, quoted elements with ``\"`` and ``\\`` escapes, unquoted ``NULL``,
    a bounds prefix (``[2:3]={7,8}``) and multi-dimensional arrays, which come out
    flattened in row-major order (``{{1,2},{3,4}}`` -> 1, 2, 3, 4).
    """
    if text.startswith("["):
        match = _BOUNDS.match(text)
        if match is None:
            raise ValueError("malformed array bounds")
        text = text[match.end() :]
    if len(text) < 2 or text[0] != "{" or text[-1] != "}":
        raise ValueError("array literal must be enclosed in braces")
    body = text[1:-1]
    if not body:
        return []
    if '"' not in body and "\\" not in body and "{" not in body:
        return [None if item.upper() == "NULL" else item.strip() for item in body.split(delimiter)]
    return _scan_array(text, delimiter)


def _scan_array(text: str, delimiter: str) -> list[str | None]:
    out: list[str | None] = []
    depth = 0
    i = 0
    n = len(text)
    expect_element = False
    while i < n:
        ch = text[i]
        if ch == "{":
            depth += 1
            i += 1
            expect_element = True
            continue
        if ch == "}":
            depth -= 1
            i += 1
            if depth < 0:
                raise ValueError("unbalanced braces in array literal")
            expect_element = False
            continue
        if ch == delimiter:
            i += 1
            expect_element = True
            continue
        if ch.isspace():
            i += 1
            continue
        if depth == 0 or not expect_element:
            raise ValueError("unexpected character in array literal")
        if ch == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted array element")
                ch = text[i]
                if ch == "\\":
                    if i + 1 >= n:
                        raise ValueError("dangling backslash in array literal")
                    chars.append(text[i + 1])
                    i += 2
                elif ch == '"':
                    i += 1
                    break
                else:
                    chars.append(ch)
                    i += 1
            out.append("".join(chars))
        else:
            chars = []
            while i < n and text[i] not in (delimiter, "}"):
                if text[i] == "\\" and i + 1 < n:
                    chars.append(text[i + 1])
                    i += 2
                    continue
                if text[i] in '{"':
                    raise ValueError("unexpected character in unquoted array element")
                chars.append(text[i])
                i += 1
            item = "".join(chars).strip()
            out.append(None if item.upper() == "NULL" else item)
        expect_element = False
    if depth != 0:
        raise ValueError("unbalanced braces in array literal")
    return out


# --- geometry and hstore ------------------------------------------------------------------------


def parse_point(text: str) -> tuple[float, float]:
    """``(x,y)`` -> the two coordinates."""
    if len(text) < 5 or text[0] != "(" or text[-1] != ")":
        raise ValueError("a point is written (x,y)")
    x, sep, y = text[1:-1].partition(",")
    if not sep:
        raise ValueError("a point is written (x,y)")
    return float(x), float(y)


_HSTORE_ITEM = re.compile(
    r'\s*"((?:[^"\\]|\\.)*)"\s*=>\s*(?:"((?:[^"\\]|\\.)*)"|(NULL))\s*(?:,|$)', re.DOTALL
)
_HSTORE_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_hstore(text: str) -> list[tuple[str, str | None]]:
    """hstore's text output (``"a"=>"1", "b"=>NULL``) -> its pairs in printed order."""
    pairs: list[tuple[str, str | None]] = []
    position = 0
    while position < len(text):
        match = _HSTORE_ITEM.match(text, position)
        if match is None or match.end() == position:
            if text[position:].strip():
                raise ValueError("malformed hstore")
            break
        key, value, null = match.groups()
        unescaped = None if null else _HSTORE_ESCAPE.sub(r"\1", value or "")
        pairs.append((_HSTORE_ESCAPE.sub(r"\1", key), unescaped))
        position = match.end()
    return pairs


def _java_string_hash(text: str) -> int:
    """java.lang.String.hashCode (over UTF-16 code units, 32-bit wrap-around)."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
    return h


def java_hashmap_order(keys: list[str]) -> list[str]:
    """``keys`` in the iteration order of a java.util.HashMap they were put into, in order.

    Debezium reads an hstore into pgjdbc's HashMap and writes it as JSON in that order;
    buckets are ``spread(hash) & (capacity - 1)`` with insertion order inside a bucket.
    """
    capacity = 16
    while len(keys) > capacity * 3 // 4:
        capacity *= 2

    def bucket(key: str) -> int:
        h = _java_string_hash(key)
        return (h ^ (h >> 16)) & (capacity - 1)

    return sorted(keys, key=bucket)  # stable: insertion order within a bucket


def array_outer_length(text: str) -> int | None:
    """The number of top-level sub-arrays of a multidimensional array literal, else None."""
    if text.startswith("["):
        match = _BOUNDS.match(text)
        if match is None:
            return None
        text = text[match.end() :]
    if not text.startswith("{{"):
        return None
    depth = count = 0
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "{":
            depth += 1
            if depth == 2:
                count += 1
        elif ch == "}":
            depth -= 1
    return count
