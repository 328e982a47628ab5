"""Every decoder of peer- or file-supplied bytes raises only GatewayError, and reads only
canonical encodings.

* **Fuzzing** (hypothesis, derandomized so CI sees the same inputs every run): for each
  decoder in :data:`tests.fuzz_targets.TARGETS`, structured mutants of valid samples,
  arbitrary bytes and arbitrary JSON. The property: a value or a GatewayError, nothing
  else. ``bench/fuzz_soak.py`` runs the same mutators for as long as asked.
* **Regressions**: every input that ever crashed a decoder is kept under
  ``tests/data/fuzz-regressions/<decoder>/`` and replayed here.
* **The named hostile values** of the issue, one table row each, with the error type
  each decoder must raise: integers of thousands of digits, years 0 and 10000, epoch
  seconds past year 9999, lone surrogates, deep nesting, wrong types.
* **Canonical times**: one text form per time (four-digit years), and each decoder
  that carries a time refuses a second spelling of it.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import wire
from gateway._decode import MAX_JSON_DEPTH, load_json
from gateway._time import format_time, parse_time
from gateway.errors import (
    EnvelopeError,
    GatewayError,
    GrantFormatError,
    LimitExceededError,
    LineageError,
    PayloadDecodeError,
    TrustError,
)
from gateway.handoff.messages import DecisionAnswer, ReceiptKind, UnknownMigrationAnswer
from gateway.keys import SignatureEncoding
from gateway.lineage import Checkpoint, EntryKind, Lineage, LineageEntry
from gateway.trust import decode_bundle
from gateway.v1 import object_pb2
from tests.fuzz_targets import (
    T0,
    TARGETS,
    TARGETS_BY_NAME,
    UNKNOWN_ANSWER,
    WORLD,
    Raw,
    dump,
    mutant,
    mutate_grant_text,
)

REGRESSIONS = Path(__file__).parent / "data" / "fuzz-regressions"
#: Examples per decoder and strategy; config and spec files go through the file system
#: and PyYAML, about a hundred times slower than the others.
EXAMPLES = {"config": 40, "object-spec": 40}
DEFAULT_EXAMPLES = 300
ITERATIONS: Counter[str] = Counter()


@pytest.fixture(autouse=True, scope="module")
def _report_iterations() -> Iterator[None]:
    """How many inputs each decoder saw in this run, printed once the module is done."""
    yield
    if ITERATIONS:
        print("\nfuzz iterations per decoder:", dict(sorted(ITERATIONS.items())))


def _outcome(name: str, raw: bytes) -> str:
    """``accepted`` or ``refused``; anything but a GatewayError fails the test, and so
    does an accepted input that does not re-encode to itself (for one-form decoders)."""
    ITERATIONS[name] += 1
    try:
        TARGETS_BY_NAME[name].check(raw)
    except GatewayError as exc:
        message = str(exc)
    else:
        return "accepted"
    assert message.strip(), f"{name}: a refusal must say what was wrong"
    return "refused"


def _settings(name: str) -> settings:
    return settings(
        max_examples=EXAMPLES.get(name, DEFAULT_EXAMPLES),
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=16),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)


@pytest.mark.parametrize("name", [t.name for t in TARGETS])
def test_structured_mutants_raise_only_gateway_errors(name: str) -> None:
    @_settings(name)
    @given(rng=st.randoms(use_true_random=False))
    def run(rng: random.Random) -> None:
        _outcome(name, mutant(TARGETS_BY_NAME[name], rng))

    run()


@pytest.mark.parametrize("name", [t.name for t in TARGETS])
def test_arbitrary_bytes_and_json_raise_only_gateway_errors(name: str) -> None:
    @_settings(name)
    @given(
        raw=st.binary(max_size=256)
        | _json_values.map(lambda v: json.dumps(v).encode())
        | _json_values.map(lambda v: dump(v).encode())
    )
    def run(raw: bytes) -> None:
        _outcome(name, raw)

    run()


def _regressions() -> list[Any]:
    return [
        pytest.param(path.parent.name, path, id=f"{path.parent.name}/{path.stem}")
        for path in sorted(REGRESSIONS.glob("*/*.bin"))
    ]


@pytest.mark.parametrize(("name", "path"), _regressions())
def test_inputs_that_once_crashed_a_decoder_are_refused(name: str, path: Path) -> None:
    # Each file crashed db71f6b with something other than a GatewayError (the soak's
    # --save wrote it); each is hostile, so a refusal is the only right answer.
    assert _outcome(name, path.read_bytes()) == "refused"


def test_the_regression_corpus_covers_every_json_and_protobuf_decoder() -> None:
    kept = {path.parent.name for path in REGRESSIONS.glob("*/*.bin")}
    assert kept <= set(TARGETS_BY_NAME), "a regression folder names no decoder"
    assert len(kept) >= 12, f"only {sorted(kept)}"


# --- the named hostile values, per decoder ---------------------------------------


@dataclass(frozen=True)
class Hostile:
    name: str
    decode: Any
    raw: bytes
    error: type[GatewayError]
    reason: str
    mentions: str = ""


def _entry_with(name: str, value: object) -> bytes:
    return dump({**json.loads(WORLD.entries[0]), name: value}).encode("utf-8")


def _checkpoint_with(name: str, value: object) -> bytes:
    return dump({**json.loads(WORLD.checkpoint), name: value}).encode("utf-8")


def _bundle_with(name: str, value: object) -> bytes:
    return dump({**json.loads(WORLD.bundle), name: value}).encode("utf-8")


def _decision_with(name: str, value: object) -> bytes:
    return dump({**json.loads(WORLD.decision), name: value}).encode("utf-8")


def _unknown_with(name: str, value: object) -> bytes:
    return dump({**json.loads(UNKNOWN_ANSWER), name: value}).encode("utf-8")


def _grant_with(name: str, value: object) -> bytes:
    """The sample grant with one claim changed, signed again by its real key."""
    header, payload, _ = WORLD.grant.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    text = dump({**claims, name: value}, canonical=False)
    signing_input = f"{header}.{_b64(text.encode())}"
    signature = WORLD.signer.sign(signing_input.encode(), encoding=SignatureEncoding.P1363)
    return f"{signing_input}.{_b64(signature)}".encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _grant(raw: bytes) -> object:
    return TARGETS_BY_NAME["grant"].decode(raw)


def _transfer_with(change: Any) -> bytes:
    message = object_pb2.Transfer()
    message.ParseFromString(WORLD.transfer)
    change(message)
    return message.SerializeToString(deterministic=True)


def _receipt_with(change: Any) -> bytes:
    message = object_pb2.Receipt()
    message.ParseFromString(WORLD.receipt)
    change(message)
    return message.SerializeToString(deterministic=True)


def _set_seconds(field: str, seconds: int, nanos: int = 0) -> Any:
    def change(message: Any) -> None:
        getattr(message, field).seconds = seconds
        getattr(message, field).nanos = nanos

    return change


def _receipt(raw: bytes) -> object:
    return wire.decode_receipt(raw, ReceiptKind.STAGED)


DIGITS = Raw("1" * 5000)
DEEP = Raw("[" * 100_000 + "]" * 100_000)
SURROGATE = Raw('"\\ud800"')
YEAR_10000 = 253_402_300_800

HOSTILE = [
    Hostile("entry-digits", LineageEntry.decode, _entry_with("seq", DIGITS), LineageError, "5000-digit int"),
    Hostile("entry-surrogate", LineageEntry.decode, _entry_with("detail", SURROGATE), LineageError, "lone surrogate", "surrogate"),
    Hostile("entry-deep", LineageEntry.decode, _entry_with("detail", DEEP), LineageError, "deep nesting"),
    Hostile("entry-type", LineageEntry.decode, _entry_with("epoch", "1"), LineageError, "wrong type", "epoch"),
    Hostile("entry-year-0", LineageEntry.decode, _entry_with("time", "0000-01-01T00:00:00.000Z"), LineageError, "year 0", "0001-9999"),
    Hostile("entry-year-10000", LineageEntry.decode, _entry_with("time", "10000-01-01T00:00:00.000Z"), LineageError, "year 10000"),
    Hostile("entry-nan", LineageEntry.decode, _entry_with("epoch", Raw("NaN")), LineageError, "NaN", "NaN"),
    Hostile("checkpoint-digits", Checkpoint.decode, _checkpoint_with("size", DIGITS), LineageError, "5000-digit int"),
    Hostile("checkpoint-surrogate", Checkpoint.decode, _checkpoint_with("host", SURROGATE), LineageError, "lone surrogate"),
    Hostile("checkpoint-overflow", Checkpoint.decode, _checkpoint_with("epoch", Raw("1e999")), LineageError, "1e999"),
    Hostile("bundle-digits", decode_bundle, _bundle_with("sequence", DIGITS), TrustError, "5000-digit int"),
    Hostile("bundle-surrogate", decode_bundle, _bundle_with("trust_domain", SURROGATE), TrustError, "lone surrogate"),
    Hostile("bundle-deep", decode_bundle, _bundle_with("keys", DEEP), TrustError, "deep nesting"),
    Hostile("bundle-year-0", decode_bundle, _bundle_with("issued_at", "0000-01-01T00:00:00.000Z"), TrustError, "year 0"),
    Hostile("decision-digits", DecisionAnswer.decode, _decision_with("outcome", DIGITS), PayloadDecodeError, "5000-digit int"),
    Hostile("decision-type", DecisionAnswer.decode, _decision_with("source", 7), PayloadDecodeError, "wrong type", "source"),
    Hostile("decision-year-10000", DecisionAnswer.decode, _decision_with("issued_at", "10000-01-01T00:00:00.000Z"), PayloadDecodeError, "year 10000"),
    Hostile("unknown-digits", UnknownMigrationAnswer.decode, _unknown_with("migration_id", DIGITS), PayloadDecodeError, "5000-digit int"),
    Hostile("unknown-type", UnknownMigrationAnswer.decode, _unknown_with("destination", 7), PayloadDecodeError, "wrong type", "destination"),
    Hostile("unknown-year-10000", UnknownMigrationAnswer.decode, _unknown_with("issued_at", "10000-01-01T00:00:00.000Z"), PayloadDecodeError, "year 10000"),
    Hostile("grant-exp-1e20", _grant, _grant_with("exp", 10**20), GrantFormatError, "exp 10**20, signed", "'exp'"),
    Hostile("grant-exp-year-10000", _grant, _grant_with("exp", YEAR_10000), GrantFormatError, "exp past 9999", "'exp'"),
    Hostile("grant-iat-negative", _grant, _grant_with("iat", -(10**12)), GrantFormatError, "iat before year 1", "'iat'"),
    Hostile("grant-nbf-digits", _grant, _grant_with("nbf", DIGITS), GrantFormatError, "5000-digit nbf, signed"),
    Hostile("grant-surrogate", _grant, _grant_with("jti", SURROGATE), GrantFormatError, "lone surrogate, signed"),
    Hostile("grant-repeated", _grant, _grant_with("exp", Raw('1,"exp":2')), GrantFormatError, "repeated member", "repeats"),
    Hostile("transfer-year-10000", wire.decode_transfer, _transfer_with(_set_seconds("expires_at", YEAR_10000)), LimitExceededError, "Timestamp past 9999"),
    Hostile("transfer-year-9999", wire.decode_transfer, _transfer_with(_set_seconds("expires_at", YEAR_10000 - 1)), LimitExceededError, "expiry whose skew arithmetic would overflow"),
    Hostile("transfer-nanos", wire.decode_transfer, _transfer_with(_set_seconds("issued_at", 1_800_000_000, 2**31 - 1)), PayloadDecodeError, "nanos out of range"),
    Hostile("transfer-entry-digits", wire.decode_transfer, _transfer_with(lambda m: m.lineage.entries.__setitem__(0, _entry_with("seq", DIGITS))), LineageError, "5000 digits in a carried entry"),
    Hostile("transfer-interval", wire.decode_transfer, _transfer_with(lambda m: setattr(m.object.cycle, "interval_ms", 2**64 - 1)), LimitExceededError, "interval past timedelta"),
    Hostile("receipt-year-0", _receipt, _receipt_with(_set_seconds("issued_at", -62_135_596_801)), PayloadDecodeError, "before year 1"),
    Hostile("authority-deep", wire.decode_authority, b"[" * 100_000, PayloadDecodeError, "deep nesting"),
    Hostile("authority-digits", wire.decode_authority, b'{"allow":' + b"1" * 5000 + b',"deny":[]}', PayloadDecodeError, "5000-digit int"),
]  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
def test_named_hostile_values_are_refused_with_the_decoders_error(case: Hostile) -> None:
    with pytest.raises(GatewayError) as caught:
        case.decode(case.raw)
    assert isinstance(caught.value, case.error), f"{case.reason}: {caught.value!r}"
    assert case.mentions in str(caught.value), f"{case.reason}: {caught.value}"


def test_load_json_limits() -> None:
    assert load_json(b'{"a":[' + b"1," * 3 + b"1]}", error=EnvelopeError, what="x") == {
        "a": [1] * 4
    }
    assert load_json('"\\ud83d\\ude00"', error=EnvelopeError, what="x") == "\U0001f600"
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert load_json(nested, error=EnvelopeError, what="x") is not None
    for raw in (
        "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
        "1" * 65,
        "-" + "1" * 65,
        "NaN",
        "-Infinity",
        "1e400",
        '{"a":1,"a":1}',
        '"\\udc00"',
        b"\xff",
        '"a"'.encode("utf-16"),
    ):
        with pytest.raises(EnvelopeError):
            load_json(raw, error=EnvelopeError, what="x")


# --- canonical times -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00.000Z"),
        (datetime(26, 11, 21, 20, 52, 45, 123000, tzinfo=UTC), "0026-11-21T20:52:45.123Z"),
        (datetime(999, 12, 31, tzinfo=UTC), "0999-12-31T00:00:00.000Z"),
        (datetime(2026, 11, 21, 20, 52, 45, 123999, tzinfo=UTC), "2026-11-21T20:52:45.123Z"),
        (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC), "9999-12-31T23:59:59.999Z"),
    ],
)
def test_times_have_one_text_form_with_four_digit_years(moment: datetime, text: str) -> None:
    assert format_time(moment) == text
    assert format_time(parse_time(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "0000-01-01T00:00:00.000Z",  # no year 0
        "10000-01-01T00:00:00.000Z",
        "26-11-21T20:52:45.123Z",  # what strftime("%Y") wrote for year 26
        "2026-02-30T00:00:00.000Z",
        "2026-11-21T23:59:60.000Z",
        "2026-11-21T20:52:45.123+00:00",
        "2026-11-21t20:52:45.123z",
        "2026-11-21T20:52:45Z",
        "２０２６-11-21T20:52:45.123Z",  # fullwidth digits are \d, but not a time
    ],
)
def test_parse_time_refuses_every_other_spelling(text: str) -> None:
    with pytest.raises(ValueError, match="time"):
        parse_time(text)


def test_format_time_refuses_a_moment_outside_utc_years() -> None:
    with pytest.raises(ValueError, match="outside the years 0001-9999"):
        format_time(datetime(9999, 12, 31, 23, 0, tzinfo=timezone(-timedelta(hours=2))))


def _lineage_at(at: datetime) -> Lineage:
    return Lineage().append(
        EntryKind.CREATED,
        host="spiffe://org-a.example/cluster/east/gateway",
        at=at,
        epoch=0,
        generation=0,
        data_digest=b"\x01" * 32,
        credentials_digest=b"\x02" * 32,
    )


@pytest.mark.parametrize("year", [1, 26, 999, 1000, 2026, 9999])
def test_a_lineage_entry_of_any_year_round_trips_byte_for_byte(year: int) -> None:
    entry = _lineage_at(datetime(year, 6, 1, 12, 0, 0, 7000, tzinfo=UTC)).entries[0]
    raw = entry.encode()
    decoded = LineageEntry.decode(raw)
    assert decoded == entry
    assert decoded.encode() == raw
    assert LineageEntry.decode(raw).leaf_hash() == entry.leaf_hash()


def test_a_changed_year_byte_is_a_different_entry_never_a_second_spelling() -> None:
    # The case tests/test_lineage.py once hit at random: "2026" -> "0026" parsed, but
    # re-encoded as "26", so the decoded entry was not the bytes that were hashed.
    raw = _lineage_at(T0).entries[0].encode()
    changed = raw.replace(b'"2026-', b'"0026-')
    entry = LineageEntry.decode(changed)
    assert replace(entry).encode() == changed  # a copy re-encodes; decode's kept bytes aside
    assert entry.time.year == 26


@pytest.mark.parametrize(
    "spelling",
    [
        "2026-11-21T20:52:45.123+00:00",
        "2026-11-21T20:52:45.1230Z",
        "2026-11-21 20:52:45.123Z",
        "２０２６-11-21T20:52:45.123Z",
    ],
)
def test_decoders_that_carry_a_time_refuse_a_second_spelling(spelling: str) -> None:
    for decode, raw, error in (
        (LineageEntry.decode, _entry_with("time", spelling), LineageError),
        (Checkpoint.decode, _checkpoint_with("issued_at", spelling), LineageError),
        (decode_bundle, _bundle_with("issued_at", spelling), TrustError),
        (DecisionAnswer.decode, _decision_with("issued_at", spelling), PayloadDecodeError),
    ):
        with pytest.raises(error):
            decode(raw)


def test_receipts_and_transfers_refuse_sub_millisecond_times() -> None:
    # The gateway writes milliseconds; a receipt whose time differs only below them
    # would decode to the same receipt from different signed bytes.
    seconds = int(T0.timestamp())
    with pytest.raises(PayloadDecodeError, match="sub-millisecond"):
        _receipt(_receipt_with(_set_seconds("issued_at", seconds, 123_000_001)))
    assert _receipt(_receipt_with(_set_seconds("issued_at", seconds, 123_000_000))) is not None
    for field in ("issued_at", "expires_at"):
        with pytest.raises(PayloadDecodeError, match="sub-millisecond"):
            wire.decode_transfer(_transfer_with(_set_seconds(field, seconds, 1)))
    with pytest.raises(PayloadDecodeError, match="sub-millisecond"):
        wire.decode_transfer(
            _transfer_with(lambda m: setattr(m.object.cycle.next_due, "nanos", 1_000_001))
        )


@pytest.mark.parametrize(
    ("decode", "raw", "field"),
    [
        (_receipt, _receipt_with(lambda m: m.ClearField("issued_at")), "issued_at"),
        (wire.decode_transfer, _transfer_with(lambda m: m.ClearField("expires_at")), "expires_at"),
        (wire.decode_transfer, _transfer_with(lambda m: m.ClearField("lineage")), "lineage"),
        (wire.decode_transfer, _transfer_with(lambda m: m.object.ClearField("cycle")), "cycle"),
    ],
    ids=["receipt-time", "transfer-expiry", "transfer-lineage", "transfer-cycle"],
)
def test_absent_parts_are_refused_not_read_as_defaults(decode: Any, raw: bytes, field: str) -> None:
    # An absent time would read as 1970-01-01 and re-encode as a present one.
    with pytest.raises(PayloadDecodeError, match=f"has no {field}"):
        decode(raw)


def test_mutated_grants_are_re_signed_so_they_reach_the_claim_checks() -> None:
    # Guards the fuzzer itself: a mutant that stopped at the signature would test nothing.
    rng = random.Random(7)
    reached = 0
    for _ in range(60):
        raw = mutate_grant_text(WORLD.grant, rng).encode()
        try:
            _grant(raw)
        except GatewayError as exc:
            reached += "signature" not in str(exc)
    assert reached > 30
