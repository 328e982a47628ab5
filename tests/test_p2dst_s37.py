"""Session 37's cuts of the destination's CPU per migration (issue 13, P2): each fast path
gives exactly what the plain path gives, checked on seeded cases against the plain path."""

from __future__ import annotations

import io
import json
import logging
import random

import pytest

from gateway import observability
from gateway.observability import HANDOFF_FIELDS
from gateway.observability.logs import (
    TEXT_FORMAT,
    HandoffFields,
    _json_formatter,
    _SecondTimes,
    configure_logging,
)

SEED = 37


def _plain_handoff(record: logging.LogRecord) -> None:
    """The filter as it was written before session 37: the plain path."""
    fields = observability.HANDOFF.get()
    for name in HANDOFF_FIELDS:
        setattr(record, name, fields.get(name))
    record.trace_id = record.span_id = None
    record.handoff = "".join(
        f" {name}={fields[name]}" for name in HANDOFF_FIELDS if fields.get(name)
    )


def _records(count: int) -> list[tuple[logging.LogRecord, dict[str, str]]]:
    """Seeded records: times within and across seconds (and near their edges), some
    handoff fields bound and some not."""
    rng = random.Random(SEED)
    start = 1_796_000_000.0
    cases = []
    for index in range(count):
        created = start + rng.choice((0.0, 0.0005, 0.9995, rng.random())) + rng.randrange(4)
        record = logging.LogRecord(
            "gateway.handoff.destination", logging.INFO, __file__, 1, "line %d", (index,), None
        )
        record.created = created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        fields = {
            name: f"{name}-{rng.randrange(1000)}" for name in HANDOFF_FIELDS if rng.random() < 0.7
        }
        cases.append((record, fields))
    return cases


def _bound(fields: dict[str, str]) -> object:
    return observability.HANDOFF.set(dict(fields))


def test_text_lines_are_the_plain_formatters_lines() -> None:
    fast, plain = _SecondTimes(TEXT_FORMAT), logging.Formatter(TEXT_FORMAT)
    handoff = HandoffFields()
    for record, fields in _records(400):
        token = _bound(fields)
        try:
            mine = logging.makeLogRecord(record.__dict__)
            theirs = logging.makeLogRecord(record.__dict__)
            assert handoff.filter(mine)
            _plain_handoff(theirs)
        finally:
            observability.HANDOFF.reset(token)  # type: ignore[arg-type]
        assert fast.format(mine) == plain.format(theirs)
        assert mine.__dict__ == theirs.__dict__


def test_json_lines_are_the_plain_formatters_lines() -> None:
    from pythonjsonlogger.json import JsonFormatter

    fast = _json_formatter()
    plain = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
    for record, _fields in _records(200):
        mine = json.loads(fast.format(logging.makeLogRecord(record.__dict__)))
        theirs = json.loads(plain.format(logging.makeLogRecord(record.__dict__)))
        assert mine["time"] == theirs["time"]
        assert mine == {key: value for key, value in theirs.items() if value is not None}


def test_configured_lines_skip_the_callers_frames(
    restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No format shows the caller's file, thread or process: no record looks them up,
    and the line reads as before."""
    configure_logging("text", level=logging.INFO)
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)

    def walked(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("findCaller was called")

    monkeypatch.setattr(logging.Logger, "findCaller", walked)
    token = _bound({"migration_id": "mig-1", "peer": "spiffe://a.example/h"})
    try:
        logging.getLogger("gateway.tests.s37").info("activated %s", "obj://a.example/x")
    finally:
        observability.HANDOFF.reset(token)  # type: ignore[arg-type]
    line = stream.getvalue()
    assert line.endswith(
        " INFO gateway.tests.s37: activated obj://a.example/x"
        " migration_id=mig-1 peer=spiffe://a.example/h\n"
    )


def _plain_b64url_decode(segment: str) -> bytes | None:
    """The plain path: decode, then refuse unless encoding the bytes again gives the
    segment (None: refused)."""
    import base64
    import re

    if not re.fullmatch(r"[A-Za-z0-9_-]*", segment) or len(segment) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == segment else None


def test_grant_segments_are_canonical_exactly_when_they_encode_back() -> None:
    import base64

    from gateway.credentials import _b64url_decode
    from gateway.errors import GrantFormatError

    rng = random.Random(SEED)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    segments = ["", "A", "AA", "AB", "AAA", "AAB"]
    for _ in range(3000):
        raw = rng.randbytes(rng.randrange(0, 40))
        encoded = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        segments.append(encoded)
        if encoded:  # the same segment with its last character changed: maybe canonical
            segments.append(encoded[:-1] + rng.choice(alphabet))
        segments.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12))))
    refused = 0
    for segment in segments:
        expected = _plain_b64url_decode(segment)
        try:
            got: bytes | None = _b64url_decode(segment, "payload")
        except GrantFormatError:
            got = None
        assert got == expected, segment
        refused += expected is None
    assert 1000 < refused < len(segments) - 1000  # both outcomes well represented


def _plain_grant(compact: str, key_id: str, claims: dict[str, object]) -> object:
    """The grant as _parse built it before session 37: its class's own __init__, with
    the same checks in the same order (the plain path)."""
    from gateway import credentials as c

    if set(claims) - c._CLAIMS:
        raise c.GrantFormatError("unknown claims")
    parent = claims.get("prf")
    if parent is not None and not isinstance(parent, str):
        raise c.GrantFormatError("grant claim 'prf' must be a string")
    capabilities, constraints = c._authority_claims(claims)  # type: ignore[arg-type]
    return c.Grant(
        compact=compact,
        key_id=key_id,
        issuer=c._require(claims, "iss", str),  # type: ignore[arg-type]
        subject=c._require(claims, "sub", str),  # type: ignore[arg-type]
        audiences=c._audiences_claim(claims.get("aud")),
        issued_at=c._time(c._require(claims, "iat", int), "iat"),  # type: ignore[arg-type]
        not_before=c._time(c._require(claims, "nbf", int), "nbf"),  # type: ignore[arg-type]
        expires_at=c._time(c._require(claims, "exp", int), "exp"),  # type: ignore[arg-type]
        grant_id=c._require(claims, "jti", str),  # type: ignore[arg-type]
        capabilities=capabilities,
        constraints=constraints,
        parent_digest=parent,  # type: ignore[arg-type]
        replaces=claims.get("rpl", ""),  # type: ignore[arg-type]
        home=claims.get("home", ""),  # type: ignore[arg-type]
    )


def test_grants_parsed_slot_by_slot_are_those_their_class_builds() -> None:
    import dataclasses

    from gateway import credentials as c
    from gateway.errors import GatewayError

    assert not hasattr(c.Grant, "__post_init__")  # the builder skips nothing __init__ runs
    rng = random.Random(SEED)
    hosts = [
        "spiffe://org-a.example/cluster/east/gateway",
        "spiffe://org-b.example/cluster/west/gateway",
        "spiffe://org-b.example",
    ]
    parsed = refused = 0
    for index in range(600):
        claims: dict[str, object] = {
            "iss": hosts[0],
            "sub": f"obj://org-a.example/p/{index}",
            "aud": rng.sample(hosts, rng.randrange(1, 4)) if rng.random() < 0.8 else hosts[1],
            "iat": 1_796_000_000 + rng.randrange(100),
            "nbf": 1_796_000_000,
            "exp": 1_799_000_000 + rng.randrange(10**6),
            "jti": f"{rng.getrandbits(128):032x}",
            "cap": [{"res": "state:self", "act": ["read", "write"][: rng.randrange(1, 3)]}],
            "cons": {"max_hops": rng.randrange(1, 1000)},
        }
        if rng.random() < 0.3:
            claims["prf"] = f"{rng.getrandbits(128):032x}"
        if rng.random() < 0.3:  # one claim missing or of the wrong type
            name = rng.choice(sorted(claims))
            if rng.random() < 0.5:
                del claims[name]
            else:
                claims[name] = rng.choice([None, 7, "x", [], True])
        compact, key_id = f"h.p{index}.s", f"key-{index % 3}"
        plain_error: GatewayError | None = None
        try:
            want = _plain_grant(compact, key_id, claims)
        except GatewayError as exc:
            plain_error = exc
        if plain_error is not None:
            with pytest.raises(type(plain_error)) as raised:
                c._parse(compact, key_id=key_id, claims=claims)
            assert raised.value.reason == plain_error.reason
            refused += 1
            continue
        got = c._parse(compact, key_id=key_id, claims=claims)
        assert type(got) is type(want)
        assert got == want
        for field in dataclasses.fields(c.Grant):
            assert getattr(got, field.name) == getattr(want, field.name), field.name
        parsed += 1
    assert parsed > 300 and refused > 50


def test_the_destinations_copies_are_those_dataclasses_replace_makes() -> None:
    """The staged copy (authority granted here) and the ACTIVATED record, built slot by
    slot, are field for field the very values dataclasses.replace gives."""
    import dataclasses
    from datetime import UTC, datetime, timedelta

    from gateway.handoff import destination
    from gateway.handoff.records import DestinationRecord, DestinationStep
    from gateway.model import NO_AUTHORITY, GovernedObject, LifecycleState

    def same(got: object, want: object) -> None:
        assert type(got) is type(want)
        assert got == want
        for field in dataclasses.fields(want):  # type: ignore[arg-type]
            assert getattr(got, field.name) is getattr(want, field.name), field.name

    rng = random.Random(SEED)
    start = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
    for index in range(300):
        at = start + timedelta(milliseconds=rng.randrange(10**9))
        obj = GovernedObject(
            object_id=f"obj://org-a.example/p/{index}",
            tenant=rng.choice(["default", "t2"]),
            data=rng.randbytes(rng.randrange(64)),
            content_type="application/json",
            grants=tuple(f"g{rng.randrange(9)}" for _ in range(rng.randrange(3))),
            epoch=rng.randrange(1, 1000),
            state=rng.choice(list(LifecycleState)),
            migration_id=f"mig-{rng.getrandbits(64):016x}",
            last_transfer_digest=rng.randbytes(32),
            subscriptions=tuple(f"topic-{n}" for n in range(rng.randrange(3))),
        )
        expires = None if rng.random() < 0.3 else at + timedelta(days=rng.randrange(1, 30))
        authority = NO_AUTHORITY if rng.random() < 0.5 else dataclasses.replace(NO_AUTHORITY)
        same(
            destination._with_authority(obj, authority, expires),
            dataclasses.replace(obj, authority=authority, authority_expires=expires),
        )
        record = DestinationRecord(
            migration_id=obj.migration_id,
            object_id=obj.object_id,
            tenant=obj.tenant,
            source_host="spiffe://org-a.example/cluster/east/gateway",
            step=DestinationStep.STAGED,
            transfer_digest=rng.randbytes(32),
            staged_receipt=rng.randbytes(rng.randrange(300)),
            staged=obj,
            created_at=at,
            updated_at=at,
            reason=rng.choice(["", "why"]),
        )
        receipt, later = rng.randbytes(rng.randrange(1, 300)), at + timedelta(seconds=1)
        same(
            destination._activated_record(record, DestinationStep.ACTIVATED, None, receipt, later),
            dataclasses.replace(
                record,
                step=DestinationStep.ACTIVATED,
                staged=None,
                activation_receipt=receipt,
                updated_at=later,
            ),
        )
