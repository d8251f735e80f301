"""Generated hostile input (hypothesis strategies), shared by the tests that refuse it.

Each strategy is a class of input that once reached a 500 or slipped past a check,
grown into every variant hypothesis can think of rather than the one example found.
"""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import strategies as st

from tests.support.hygiene import SECRET_SHAPES

# Digit strings up to and past Python's integer-string limit (4,300 digits).
LONG_DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=6000)
# Characters str.isdigit() and str.isnumeric() accept but int() does not, and the reverse:
# superscripts, circled numbers, Roman numerals, Arabic-Indic and full-width digits...
UNICODE_DIGITS = st.text(
    alphabet=st.characters(categories=("Nd", "No", "Nl")), min_size=1, max_size=8
)
DECORATED_NUMBERS = st.builds(
    lambda head, digits, tail: head + digits + tail,
    st.sampled_from(["", "+", "-", " ", "\t", "0x", "0b", "\u2212", "\uff0b", "\u00a0"]),
    st.text(alphabet="0123456789", min_size=1, max_size=40),
    st.sampled_from(["", "_0", " ", ".0", ".5", "e3", "E400", "\x00", "\n", "j", "%"]),
)
SPECIAL_NUMBERS = st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-0", "0" * 50, "\u00b2", "\u2460",
     "\u216b", "\U0001d7d7", "\uff19", "\u0663", "\u00bd", "0.0", "1,000", "0o7"]
)  # fmt: skip
BOOL_SPELLINGS = st.sampled_from(
    ["true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n", "", "2", "truee"]
).flatmap(lambda word: st.sampled_from([word, word.upper(), word.title(), f" {word} "]))
ANY_TEXT = st.text(max_size=64)

# Hypothesis also draws string constants from the code under test (the sandbox's
# "ya29.sandbox-" token prefix among them); values that look like a token would be
# reported by the suite's secret scan when the sandbox logs a request, so none is sent.
QUERY_VALUES = st.one_of(
    LONG_DIGITS, UNICODE_DIGITS, DECORATED_NUMBERS, SPECIAL_NUMBERS, BOOL_SPELLINGS, ANY_TEXT
).filter(lambda value: not SECRET_SHAPES.search(value))


def encoded(value: str) -> str:
    """`value` percent-encoded as UTF-8, as a client would send it."""
    return quote(value, safe="")


# Raw bytes percent-encoded: invalid UTF-8 (%FF), overlong forms (%C0%AF), NUL.
RAW_ENCODED = st.binary(max_size=16).map(lambda raw: "".join(f"%{byte:02X}" for byte in raw))


def query_strings(names: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Query strings of one to four parameters (names may repeat), values hostile."""
    pair = st.one_of(
        st.tuples(names, QUERY_VALUES.map(encoded)),
        st.tuples(names, RAW_ENCODED),
    )
    return st.lists(pair, min_size=1, max_size=4).map(
        lambda pairs: "&".join(f"{encoded(name)}={value}" for name, value in pairs)
    )
