"""Reading JSON that came from outside: one parser every decoder of peer or file bytes uses.

The standard library's :func:`json.loads` raises more than ``JSONDecodeError`` on hostile
input, and accepts values the gateway cannot use:

* an integer of thousands of digits raises a bare ``ValueError`` (Python's limit on
  int-from-str conversion), after quadratic work;
* ``[[[[…`` raises ``RecursionError``;
* ``NaN``, ``Infinity`` and ``1e999`` become floats that equal nothing, not even
  themselves, so no canonical re-encoding can hold;
* ``"\\ud800"`` becomes a lone surrogate, which is not Unicode: re-encoding it as UTF-8
  (as canonical forms do) raises ``UnicodeEncodeError`` far from the decoder;
* a repeated member name is silently resolved to its last value, so two parsers can
  read two different documents from the same signed bytes.

:func:`load_json` refuses all of these before any caller sees the document, and raises
the caller's own :class:`~gateway.errors.GatewayError` subclass, so that nothing but a
``GatewayError`` ever leaves a decoder. Limits are named constants, checked while
parsing (integers) or right after (depth, text), never after work proportional to them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from gateway.errors import GatewayError

#: The C scanner behind json.loads (the same parser and settings), without its per-call
#: wrapper (encoding detection, whitespace scans): one value from an offset, and its
#: end. None of load_json's refusals: for text whose fields the caller checks itself
#: (lineage entries) or that this host wrote (an object's data). Untyped in typeshed.
scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]

#: Every integer the gateway signs or stores fits in 64 bits (20 digits). Longer ones
#: up to this many digits are read (cheaply) so that the field's own check can name
#: what is wrong ("exp 10**30 is not a usable time"); beyond it they are refused here,
#: far below the 4300 digits at which Python's int() raises after quadratic work.
MAX_JSON_INT_DIGITS = 64
#: Deeper than any document the gateway writes (grant constraints are the deepest, at 4).
MAX_JSON_DEPTH = 32


class _Refused(Exception):
    """Raised from inside the parser's hooks; turned into the caller's error below."""


def _parse_int(text: str) -> int:
    # Called with the literal's text before int() runs: a long literal is refused
    # without the conversion (and the ValueError) the standard library would do.
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _Refused(f"an integer of {len(text)} digits; at most {MAX_JSON_INT_DIGITS}")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:32]!r} is out of range")
    return value


def _parse_constant(text: str) -> Any:
    raise _Refused(f"{text} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _Refused("an object repeats a member name")
    return document


#: A ``\\u`` escape of a UTF-16 surrogate (D800-DFFF): in text that is valid UTF-8, the
#: only way a parsed string can hold a lone surrogate. It also matches a valid pair and
#: an escaped backslash followed by ``ud8``: those take the full walk, which tells them apart.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
#: Every ASCII digit as "0", every other byte as a space: in the UTF-8 bytes of a text
#: mapped through it, a run of more digits than an integer may have (inside a string
#: too: then the checked reader runs, and lets the string through) is a run of "0"s,
#: found by one substring search. Bytes 0x30-0x39 are ASCII digits in UTF-8 and nothing
#: else, so this finds exactly the runs of [0-9]. Linear with a small constant: a regex
#: tried at each position cost 26 ns a character (270 us for a 4.4 KB envelope; a third
#: of `gateway verify --archive`), translating costs about one.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_RUN = b"0" * (MAX_JSON_INT_DIGITS + 1)


def _has_long_digit_run(raw: bytes) -> bool:
    """Whether ``raw`` holds more than :data:`MAX_JSON_INT_DIGITS` ASCII digits in a row."""
    return _LONG_RUN in raw.translate(_DIGITS_AS_ZEROS)


def _may_break_limits(text: str, *, from_utf8: bool) -> bool:
    """Whether the document in ``text`` could hold a lone surrogate or nest deeper than
    :data:`MAX_JSON_DEPTH`; if not, the walk of :func:`_check_tree` would find nothing.
    Each container of depth *d* needs *d* opening brackets in the text, and a lone
    surrogate needs a surrogate escape, or (text not decoded from UTF-8 here) a
    non-ASCII character. Cheap, and never wrong in the direction that skips a check."""
    if not from_utf8 and not text.isascii():
        return True
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        return True
    return _SURROGATE_ESCAPE.search(text) is not None


def _check_tree(document: Any) -> None:
    """Depth and text of a parsed document, walked without recursion."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise _Refused(f"nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(value, dict):
                for key in value:
                    _check_text(key)
                pending.extend((item, depth + 1) for item in value.values())
            else:
                pending.extend((item, depth + 1) for item in value)


def check_document(document: Any, *, error: type[GatewayError], what: str) -> None:
    """Refuse what a YAML (or other already parsed) document may hold that JSON text
    could not: lone surrogates (from ``"\\ud800"`` escapes) and integers beyond
    :data:`MAX_JSON_INT_DIGITS` digits (hex literals have no length limit in PyYAML,
    and printing one in an error message would itself raise). Anchors may make the
    document cyclic (``&a [*a]``), so each container is visited once."""
    seen: set[int] = set()
    pending = [document]
    limit = 10**MAX_JSON_INT_DIGITS
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            try:
                _check_text(value)
            except _Refused as exc:
                raise error(f"{what}: {exc}") from exc
        elif isinstance(value, int) and not isinstance(value, bool):
            if not -limit < value < limit:
                raise error(f"{what}: an integer longer than {MAX_JSON_INT_DIGITS} digits")
        elif isinstance(value, dict | list) and id(value) not in seen:
            seen.add(id(value))
            if isinstance(value, dict):
                pending.extend(value.keys())
                pending.extend(value.values())
            else:
                pending.extend(value)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Refused(
            f"a string holds a lone surrogate at {exc.start}, which is not Unicode"
        ) from exc


#: The strict reader, made once (json.loads with hooks makes a decoder per call). Shared
#: by threads as json's own default decoder is: its scanner keeps no state between calls.
_STRICT = json.JSONDecoder(
    parse_int=_parse_int,
    parse_float=_parse_float,
    parse_constant=_parse_constant,
    object_pairs_hook=_unique,
)
#: The same, for text with no run of more than MAX_JSON_INT_DIGITS digits: no integer
#: literal in it can be too long, so int() (in C) reads them without a hook per number.
_SHORT_NUMBERS = json.JSONDecoder(
    parse_float=_parse_float,
    parse_constant=_parse_constant,
    object_pairs_hook=_unique,
)


def load_json(raw: bytes | str, *, error: type[GatewayError], what: str) -> Any:
    """The JSON value in ``raw``, or ``error`` naming ``what`` could not be read and why."""
    try:
        # One encoding: json.loads would also guess UTF-16 and UTF-32 from bytes.
        from_utf8 = isinstance(raw, bytes)
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        # A lone surrogate in a str is refused after parsing (_check_tree); here its
        # bytes only need to be digits or not.
        utf8 = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        decoder = _STRICT if _has_long_digit_run(utf8) else _SHORT_NUMBERS
        document = decoder.decode(text)
        # Every document is held to the same limits; the walk is skipped only where the
        # text shows it cannot find anything (see _may_break_limits).
        if _may_break_limits(text, from_utf8=from_utf8):
            _check_tree(document)
    except _Refused as exc:
        raise error(f"{what} is not usable JSON: {exc}") from exc
    except RecursionError as exc:  # "[[[[…" exhausts the parser's stack before any hook runs
        raise error(f"{what} is not usable JSON: nested too deeply") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 (byte {exc.start})") from exc
    except ValueError as exc:  # JSONDecodeError, and whatever else json raises on bad text
        raise error(f"{what} is not JSON: {exc}") from exc
    return document
