"""date_parts, age_from, text_length, token_count against datetime / str methods."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from hypothesis import given, settings
from hypothesis import strategies as st

from .support import run_one

UTC = dt.timezone.utc
# Up to 2037: Arrow (with slim system TZif files) ignores DST rules past 2037; see temporal.py.
instants = st.datetimes(min_value=dt.datetime(1950, 1, 1), max_value=dt.datetime(2037, 1, 1),
                        timezones=st.just(UTC))
dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2090, 12, 31))
SETTINGS = settings(max_examples=40, deadline=None)


def _parts(moment: dt.datetime | dt.date) -> dict[str, int]:
    parts = {"year": moment.year, "month": moment.month, "day": moment.day,
             "dow": moment.weekday()}
    if isinstance(moment, dt.datetime):
        parts["hour"] = moment.hour
    return parts


@SETTINGS
@given(values=st.lists(st.none() | instants, max_size=30),
       tz=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]))
def test_date_parts_in_a_time_zone_match_datetime(values, tz):
    parts = ["year", "month", "day", "dow", "hour"]
    out = run_one("timestamp[us, UTC]", values, {"op": "date_parts", "parts": parts, "tz": tz})
    zone = zoneinfo.ZoneInfo(tz)
    for part in parts:
        assert out[f"f_{part}"] == [None if v is None else _parts(v.astimezone(zone))[part]
                                    for v in values]


@SETTINGS
@given(values=st.lists(st.none() | dates, max_size=30))
def test_date_parts_of_dates(values):
    out = run_one("date32", values, {"op": "date_parts", "parts": ["dow", "year"]})
    assert out["f_dow"] == [None if v is None else v.weekday() for v in values]
    assert out["f_year"] == [None if v is None else v.year for v in values]


def _age(born: dt.date, at: dt.date) -> int:
    return at.year - born.year - ((at.month, at.day) < (born.month, born.day))


@SETTINGS
@given(pairs=st.lists(st.tuples(st.none() | dates, st.none() | instants), max_size=30))
def test_age_from_matches_whole_years(pairs):
    born = [p[0] for p in pairs]
    at = [p[1] for p in pairs]
    out = run_one("date32", born, {"op": "age_from", "reference": "at"},
                  extra_columns={"at": ("timestamp[us, UTC]", at)})["f"]
    assert out == [None if b is None or a is None else _age(b, a.date())
                   for b, a in zip(born, at, strict=True)]


def test_age_from_leap_day_birthday():
    out = run_one("date32", [dt.date(2000, 2, 29)] * 3, {"op": "age_from", "reference": "at"},
                  extra_columns={"at": ("date32", [dt.date(2023, 2, 28), dt.date(2023, 3, 1),
                                                   dt.date(2024, 2, 29)])})["f"]
    assert out == [22, 23, 24]


texts = st.lists(st.none() | st.text(alphabet=st.sampled_from(
    [*"ab é😀", "\t", "\n", "\u3000", "\xa0", "\u2028", "\x1c", "\u200b"]), max_size=20),
    max_size=30)


@settings(max_examples=60, deadline=None)
@given(values=texts)
def test_text_length_and_token_count_match_python(values):
    lengths = run_one("string", values, {"op": "text_length"})["f"]
    tokens = run_one("string", values, {"op": "token_count"})["f"]
    assert lengths == [None if v is None else len(v) for v in values]
    assert tokens == [None if v is None else len(v.split()) for v in values]
