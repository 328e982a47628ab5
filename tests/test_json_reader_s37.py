"""The strict JSON reader tells a text with a run of more digits than an integer may have
(which must go through the reader with a hook per integer) from one without, by mapping
its bytes through a table and searching for a run of "0"s. These hold that test to the
regular expression it replaced, on the edges by hand and on generated text, and show the
run still reaches the strict reader."""

from __future__ import annotations

import base64
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _decode
from gateway._decode import MAX_JSON_INT_DIGITS, load_json
from gateway.errors import EnvelopeError

#: The test as it was before session 37.
_REFERENCE = re.compile(f"(?<![0-9])[0-9]{{{MAX_JSON_INT_DIGITS + 1}}}")
LIMIT = MAX_JSON_INT_DIGITS


def _reference(text: str) -> bool:
    return _REFERENCE.search(text) is not None


def _ours(text: str) -> bool:
    return _decode._has_long_digit_run(text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7" * LIMIT,
        "7" * (LIMIT + 1),
        "x" + "7" * (LIMIT + 1),
        "7" * (LIMIT + 1) + "x",
        "7" * LIMIT + "x" + "7" * LIMIT,
        "7" * LIMIT + "\u0663" + "7",  # an Arabic-Indic digit is not a JSON digit
        "\u0663" * (LIMIT + 5),
        "é" + "0" * (LIMIT + 1) + "é",
        "\ud800" + "1" * (LIMIT + 1),
        "\ud800" + "1" * LIMIT,
        ("1" * LIMIT + " ") * 40,
        base64.b64encode(bytes(range(256)) * 20).decode(),
        f'{{"n":{"9" * (LIMIT + 1)}}}',
        f'{{"s":"{"9" * (LIMIT + 1)}"}}',
    ],
)
def test_the_long_run_test_agrees_with_the_regular_expression_at_the_edges(text: str) -> None:
    assert _ours(text) is _reference(text)


_ALPHABET = st.sampled_from(["0", "5", "9", "a", " ", '"', "\u0663", "é", "\ud800", "/", ":"])


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    pieces=st.lists(
        st.tuples(_ALPHABET, st.integers(min_value=1, max_value=LIMIT + 3)), max_size=12
    )
)
def test_the_long_run_test_agrees_with_the_regular_expression_on_generated_text(
    pieces: list[tuple[str, int]],
) -> None:
    text = "".join(character * count for character, count in pieces)
    assert _ours(text) is _reference(text)


def test_the_long_run_test_agrees_on_seeded_random_bytes() -> None:
    generator = random.Random(37)
    for _ in range(300):
        alphabet = generator.choice([b"0123456789", b"0123456789ab", bytes(range(256))])
        size = generator.randrange(0, 600)
        raw = bytes(generator.choice(alphabet) for _ in range(size))
        text = raw.decode("utf-8", "surrogateescape")
        # surrogateescape keeps every undecodable byte as a lone surrogate, never a digit.
        assert _decode._has_long_digit_run(raw) is _reference(text)


def test_a_long_integer_still_reaches_the_strict_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    long = "9" * (LIMIT + 1)
    for document in (f'{{"n":{long}}}', f'{{"n":{long}}}'.encode()):
        with pytest.raises(EnvelopeError, match=f"an integer of {LIMIT + 1} digits"):
            load_json(document, error=EnvelopeError, what="envelope")
    # One of the longest allowed length never reaches it: a strict reader that would
    # answer None for every integer is not used.
    seen: list[str] = []
    monkeypatch.setattr(_decode, "_STRICT", _decode.json.JSONDecoder(parse_int=seen.append))
    longest = "9" * LIMIT
    assert load_json(f'{{"n":{longest}}}', error=EnvelopeError, what="envelope") == {
        "n": int(longest)
    }
    assert seen == []
