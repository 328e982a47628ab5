"""The strict JSON reader (gateway._decode.load_json) holds every document to the same
limits, but walks a parsed document only when its text could break one: a grant's claims,
with no surrogate escape, few brackets and no long digit run, are read by the C scanner
alone (issue 13, P2: a new grant per migration). Whatever the shortcut skips, a document
that breaks a limit is refused exactly as before: checked here case by case at the edges
of the shortcut, and against the reader as it was (always walking, a hook per integer)
on generated text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import _decode
from gateway._decode import MAX_JSON_DEPTH, MAX_JSON_INT_DIGITS, load_json
from gateway.errors import EnvelopeError

GRANT_CLAIMS = (
    b'{"iss":"spiffe://org-a.example/cluster/east/gateway","sub":"obj://org-a.example/bench/p2/0",'
    b'"aud":"spiffe://org-b.example/cluster/west/gateway","iat":1930132800,"nbf":1930129200,'
    b'"exp":1930219200,"jti":"771780bc051e48a6ba7f53129a6210d0","cap":[{"res":"pubsub:alerts/*",'
    b'"act":["publish"]},{"res":"state:self","act":["read","write"]}],"cons":{"max_hops":1000}}'
)


def _reference(raw: bytes | str) -> Any:
    """The reader before session 34: hooks on every number, the tree always walked."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        document = json.loads(
            text,
            parse_int=_decode._parse_int,
            parse_float=_decode._parse_float,
            parse_constant=_decode._parse_constant,
            object_pairs_hook=_decode._unique,
        )
        _decode._check_tree(document)
    except (_decode._Refused, RecursionError, ValueError) as exc:
        raise EnvelopeError(str(exc)) from exc
    return document


def test_a_grants_claims_are_read_without_the_walk_or_a_hook_per_integer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    walk, parse_int = _decode._check_tree, _decode._parse_int

    def counted_walk(document: Any) -> None:
        calls.append("walk")
        walk(document)

    def counted_int(text: str) -> int:
        calls.append("int")
        return parse_int(text)

    monkeypatch.setattr(_decode, "_check_tree", counted_walk)
    monkeypatch.setattr(_decode, "_parse_int", counted_int)
    monkeypatch.setattr(
        _decode,
        "_STRICT",
        json.JSONDecoder(
            parse_int=counted_int,
            parse_float=_decode._parse_float,
            parse_constant=_decode._parse_constant,
            object_pairs_hook=_decode._unique,
        ),
        raising=False,  # (the reader before session 34 made its decoder per call)
    )
    claims = load_json(GRANT_CLAIMS, error=EnvelopeError, what="claims")
    assert claims == json.loads(GRANT_CLAIMS)
    assert calls == []


@dataclass(frozen=True)
class Case:
    raw: bytes | str
    reason: str


REFUSED = [
    Case('"\\udc00"', "a lone low surrogate escape"),
    Case('"\\uD800"', "upper-case hex in the escape"),
    Case('["a\\\\",  "\\ud9ff"]', "an escaped backslash before a real surrogate escape"),
    Case('"\udc00"', "a str (not bytes) holding a lone surrogate itself, no escape"),
    Case("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "one level too deep"),
    Case(
        '{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1),
        "one level too deep, in objects",
    ),
    Case('{"a":"' + "1" * 70 + '","b":' + "1" * 65 + "}", "a long integer after a long string"),
    Case("-" + "9" * (MAX_JSON_INT_DIGITS + 1), "a negative long integer"),
    Case('{"a":1,"a":2}', "a repeated member"),
    Case("[1e999]", "an infinite float"),
    Case("[NaN]", "NaN"),
]

ACCEPTED = [
    Case('"\\\\ud800"', "an escaped backslash, then the text ud800: no surrogate"),
    Case('"\\ud83d\\ude00"', "a valid surrogate pair"),
    Case('["' + "[" * (MAX_JSON_DEPTH + 5) + '"]', "brackets inside a string"),
    Case('"' + "1" * 100 + '"', "a long digit run inside a string"),
    Case("-" + "9" * MAX_JSON_INT_DIGITS, "an integer of the longest allowed length"),
    Case("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "exactly the deepest allowed"),
    Case('"caf\u00e9"'.encode(), "non-ASCII text from UTF-8 bytes"),
    Case('"caf\u00e9"', "non-ASCII text in a str"),
]


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.reason)
def test_documents_that_break_a_limit_are_refused(case: Case) -> None:
    with pytest.raises(EnvelopeError):
        load_json(case.raw, error=EnvelopeError, what="x")


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda case: case.reason)
def test_documents_within_the_limits_read_as_before(case: Case) -> None:
    assert load_json(case.raw, error=EnvelopeError, what="x") == _reference(case.raw)


_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**70), max_value=10**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    st.sampled_from(["\ud800", "\udfff", "\\ud800", "[[{{", "1" * 66]),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=40,
)


def _text(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


@settings(derandomize=True, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(value=_VALUES, ascii_only=st.booleans(), as_bytes=st.booleans(), nest=st.integers(0, 40))
def test_the_reader_agrees_with_the_always_walking_reader(
    value: Any, ascii_only: bool, as_bytes: bool, nest: int
) -> None:
    text = "[" * nest + _text(value, ascii_only) + "]" * nest
    raw: bytes | str = text
    if as_bytes:
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raw = text  # a lone surrogate in the text itself: only a str can carry it
    try:
        expected = _reference(raw)
    except EnvelopeError:
        with pytest.raises(EnvelopeError):
            load_json(raw, error=EnvelopeError, what="x")
        return
    assert load_json(raw, error=EnvelopeError, what="x") == expected
