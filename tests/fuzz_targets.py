"""Every decoder of peer- or file-supplied bytes, with valid samples and hostile mutators.

Shared by ``tests/test_fuzz_decoders.py`` (a few seconds per decoder, derandomized) and
``bench/fuzz_soak.py`` (as long as asked). The one property: a decoder given any bytes
returns a value or raises a :class:`~gateway.errors.GatewayError`, nothing else.

Mutators take a :class:`random.Random`, so hypothesis (``st.randoms``) and the soak's
seeded loop drive the same code. They mutate at three levels, because random bytes
rarely get past the first check of a strict decoder:

* **bytes**: flip, insert, delete, splice, truncate;
* **JSON**: parse the valid sample, replace one value (or member name) with a hostile
  one (an integer of thousands of digits, an exponent that overflows, ``NaN``, a lone
  surrogate, year 0000 or 10000, deep nesting, the wrong type) and write it back in
  canonical form, so that the mutant reaches the checks behind the canonical one;
* **protobuf**: parse the valid sample, set one field anywhere in the message tree to an
  extreme value (seconds of year 10000, uint64 max, unknown enum values), or mutate the
  JSON inside a bytes field (lineage entries, grants), and serialize deterministically.

Grants are re-signed after a mutation by the real key, as a dishonest peer with valid
keys would: otherwise every mutant would stop at the signature.
"""

from __future__ import annotations

import atexit
import base64
import json
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gateway import envelope as dsse
from gateway import wire
from gateway.archive import CustodySegment, Segment
from gateway.audit import ARCHIVE_PAYLOAD_TYPE, Archive, archive_of, audit
from gateway.authority import CapabilitySet, Constraints, EffectiveAuthority
from gateway.config import EXAMPLE as CONFIG_EXAMPLE
from gateway.config import load_config
from gateway.credentials import issue_grant, verify_grant
from gateway.handoff.home import CustodyRecord
from gateway.handoff.messages import (
    DecisionAnswer,
    Outcome,
    Receipt,
    ReceiptKind,
    Transfer,
    UnknownMigrationAnswer,
)
from gateway.handoff.records import (
    DestinationRecord,
    DestinationStep,
    SourceRecord,
    SourceStep,
)
from gateway.keys import Purpose, SignatureEncoding, Signer
from gateway.lineage import Checkpoint, EntryKind, Lineage, LineageEntry, digest
from gateway.model import CycleState, GovernedObject, LifecycleState
from gateway.objectspec import load_spec
from gateway.runtime.appcallback import _invoke_body, sent_time
from gateway.runtime.dapr import job_target
from gateway.runtime.outbox import Event
from gateway.trust import (
    TrustStore,
    accept_bundle,
    decode_bundle,
    encode_bundle,
    new_bundle,
    sign_bundle,
)
from gateway.v1 import envelope_pb2, gateway_pb2, journal_pb2, object_pb2

T0 = datetime(2026, 11, 21, 20, 52, 45, 123000, tzinfo=UTC)
HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
OBJECT = "urn:gateway:org-a.example:invoices/inv-1"


# --- hostile values ------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text written as is: values json.dumps cannot (or will not) write."""

    text: str


_TIMES = (
    "0000-01-01T00:00:00.000Z",
    "0001-01-01T00:00:00.000Z",
    "0026-11-21T20:52:45.123Z",
    "9999-12-31T23:59:59.999Z",
    "10000-01-01T00:00:00.000Z",
    "2026-02-30T00:00:00.000Z",
    "2026-11-21T23:59:60.000Z",
    "2026-11-21T20:52:45.123+01:00",
    "2026-11-21T20:52:45.1234Z",
    "２０２６-11-21T20:52:45.123Z",  # fullwidth digits: \d matches them without re.ASCII
)
_HOSTILE: tuple[Any, ...] = (
    Raw("1" * 5000),
    Raw("-" + "9" * 4301),
    Raw("1" * 70),
    10**20,
    -(10**20),
    2**63,
    2**64,
    -1,
    0,
    253402300800,  # first second of year 10000
    -62135596801,  # last second before year 1
    Raw("1e999"),
    Raw("-1e999"),
    Raw("NaN"),
    Raw("Infinity"),
    1.5,
    True,
    None,
    "",
    "\x00",
    "spiffe://org-a.example/cluster/east/gateway",
    Raw('"\\ud800"'),
    Raw('"x\\udfffy"'),
    Raw('"\\ud83d\\ude00"'),  # a valid surrogate pair: must still be accepted as text
    [],
    {},
    [[[[[["deep"]]]]]],
    Raw("[" * 100_000 + "]" * 100_000),
    Raw("[" * 40 + "]" * 40),
    Raw('{"a":' * 5000 + "1" + "}" * 5000),
    *_TIMES,
)


def hostile_value(rng: random.Random) -> Any:
    return rng.choice(_HOSTILE)


def dump(value: Any, *, canonical: bool = True) -> str:
    """JSON text of ``value``, with :class:`Raw` parts written verbatim."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = sorted(value.items()) if canonical else list(value.items())
        return (
            "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{dump(v)}" for k, v in items) + "}"
        )
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_paths(item, (*prefix, index)))
    return found


def _set(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        return {**document, head: _set(document[head], rest, value)}
    copy = list(document)
    copy[head] = _set(copy[head], rest, value)
    return copy


def mutate_document(document: Any, rng: random.Random) -> str:
    """One hostile change to a parsed JSON document, as (usually canonical) JSON text."""
    choice = rng.randrange(10)
    paths = _paths(document)
    if choice == 0 and isinstance(document, dict) and document:
        # a member name repeated, added or removed
        key = rng.choice(sorted(document))
        how = rng.randrange(3)
        if how == 0:
            body = dump(document)[1:-1]
            return "{" + body + f",{json.dumps(key)}:{dump(hostile_value(rng))}" + "}"
        if how == 1:
            return dump({**document, rng.choice(("extra", "\ud800", key + "x")): 1})
        return dump({k: v for k, v in document.items() if k != key})
    if choice == 1:
        # a time field moved to an edge year or a second spelling
        text_paths = [p for p in paths if isinstance(_get(document, p), str)]
        if text_paths:
            return dump(_set(document, rng.choice(text_paths), rng.choice(_TIMES)))
    if choice == 2:
        # the same value in a non-canonical layout
        return json.dumps(document, indent=rng.choice((None, 1)), sort_keys=rng.random() < 0.5)
    path = rng.choice(paths)
    return dump(_set(document, path, hostile_value(rng)))


def _get(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


def mutate_bytes(raw: bytes, rng: random.Random) -> bytes:
    if not raw:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(16)))
    data = bytearray(raw)
    for _ in range(rng.randrange(1, 4)):
        how = rng.randrange(5)
        at = rng.randrange(len(data)) if data else 0
        if how == 0 and data:
            data[at] = rng.randrange(256)
        elif how == 1:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif how == 2 and data:
            del data[at : at + rng.randrange(1, 8)]
        elif how == 3:
            data[at:at] = data[rng.randrange(len(data) + 1) :][: rng.randrange(1, 32)]
        else:
            del data[at:]
    return bytes(data)


def mutate_json(raw: bytes, rng: random.Random) -> bytes:
    try:
        document = json.loads(raw)
        return mutate_document(document, rng).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):  # a mutant of a mutant need not be usable JSON
        return mutate_bytes(raw, rng)


# --- protobuf ------------------------------------------------------------------------

_INT64 = (0, -1, 1, 2**63 - 1, -(2**63), 10**15, -(10**15), 253402300800, -62135596801)
_UINT64 = (0, 1, 2**64 - 1, 2**63, 10**18, 31_622_400_001)
_INT32 = (0, -1, 1, 2**31 - 1, -(2**31), 999_999_999, 1_000_000_000, 123_456_789)
_STRINGS = ("", "x", "spiffe://org-a.example/cluster/east/gateway", "\x00", "é" * 300, "..")


def _fields(message: Message) -> list[tuple[Message, FieldDescriptor]]:
    found: list[tuple[Message, FieldDescriptor]] = []
    for field in message.DESCRIPTOR.fields:
        found.append((message, field))
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                for item in getattr(message, field.name):
                    found.extend(_fields(item))
            else:
                found.extend(_fields(getattr(message, field.name)))
    return found


def _scalar(field: FieldDescriptor, current: Any, rng: random.Random, json_inside: bool) -> Any:
    kind = field.type
    if kind in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return rng.choice(_INT64)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return rng.choice(_UINT64)
    if kind in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return rng.choice(_INT32)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return rng.choice((0, 1, 2**32 - 1))
    if kind == FieldDescriptor.TYPE_ENUM:
        return rng.choice((0, 1, 2, 3, 4, 5, 99, -1))
    if kind == FieldDescriptor.TYPE_BOOL:
        return not current
    if kind == FieldDescriptor.TYPE_STRING:
        if current and rng.random() < 0.5:
            if current.count(".") == 2:  # a compact grant
                return mutate_grant_text(current, rng)
            return mutate_bytes(current.encode(), rng).decode("utf-8", "replace")
        return rng.choice(_STRINGS)
    if kind == FieldDescriptor.TYPE_BYTES:
        if current and (json_inside or current[:1] == b"{") and rng.random() < 0.7:
            return mutate_json(current, rng)
        if current and rng.random() < 0.5:
            return mutate_bytes(current, rng)
        return bytes(rng.randrange(256) for _ in range(rng.choice((0, 16, 32, 33))))
    return current


def mutate_proto(raw: bytes, factory: Callable[[], Message], rng: random.Random) -> bytes:
    message = factory()
    try:
        message.ParseFromString(raw)
    except Exception:  # a mutant's mutant may not parse; fall back to bytes
        return mutate_bytes(raw, rng)
    for _ in range(rng.randrange(1, 3)):
        owner, field = rng.choice(_fields(message))
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if not field.is_repeated:
                # a Timestamp far outside any real time, or a sub-millisecond one
                sub = getattr(owner, field.name)
                if sub.DESCRIPTOR.full_name == "google.protobuf.Timestamp":
                    sub.seconds = rng.choice(_INT64)
                    sub.nanos = rng.choice(_INT32)
                else:
                    owner.ClearField(field.name)
            continue
        if field.is_repeated:
            items = getattr(owner, field.name)
            if items and rng.random() < 0.8:
                index = rng.randrange(len(items))
                items[index] = _scalar(field, items[index], rng, True)
            else:
                items.append(
                    _scalar(
                        field,
                        field.default_value if field.type != FieldDescriptor.TYPE_BYTES else b"",
                        rng,
                        True,
                    )
                )
            continue
        setattr(owner, field.name, _scalar(field, getattr(owner, field.name), rng, False))
    return message.SerializeToString(deterministic=rng.random() < 0.9)


# --- grants --------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mutate_grant_text(compact: str, rng: random.Random, signer: Signer | None = None) -> str:
    """A grant with one hostile change to its header or claims, re-signed when a signer
    is given (the dishonest peer's view), else with its old signature."""
    signer = signer or WORLD.signer
    parts = compact.split(".")
    if len(parts) != 3 or rng.random() < 0.15:
        return mutate_bytes(compact.encode(), rng).decode("utf-8", "replace")
    try:
        header, claims = _unb64(parts[0]), _unb64(parts[1])
    except ValueError:
        return mutate_bytes(compact.encode(), rng).decode("utf-8", "replace")
    if rng.random() < 0.25:
        header = mutate_json(header, rng)
    else:
        claims = mutate_json(claims, rng)
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    signature = signer.sign(signing_input.encode(), encoding=SignatureEncoding.P1363)
    return f"{signing_input}.{_b64(signature)}"


# --- a small world of valid samples -----------------------------------------------------


@dataclass
class _World:
    signer: Signer
    trust: TrustStore
    grant: str
    entries: tuple[bytes, ...]
    checkpoint: bytes
    committed_checkpoint: bytes  #: as sealed today: with custody and hops (ADR 0010)
    bundle: bytes
    signed_bundle: bytes
    transfer: bytes
    envelope: bytes
    receipt: bytes
    stored: bytes
    source_record: bytes
    destination_record: bytes
    authority: bytes
    decision: bytes


def _build_world() -> _World:
    signer = Signer.generate()
    since = T0 - timedelta(days=30)
    bundle = new_bundle(
        "org-a.example",
        [signer.record(purposes=list(Purpose), hosts=[HOST_A], valid_from=since)],
        issued_at=since,
    )
    trust = TrustStore.of([bundle])
    capabilities = CapabilitySet.from_claim([{"res": "pubsub:alerts/overdue", "act": ["publish"]}])
    constraints = Constraints.from_claim({"hosts": ["spiffe://org-a.example/*"], "max_hops": 3})
    grant = issue_grant(
        signer=signer,
        issuer=HOST_A,
        subject=OBJECT,
        audience="spiffe://org-b.example",
        capabilities=capabilities,
        constraints=constraints,
        not_before=T0 - timedelta(hours=1),
        expires_at=T0 + timedelta(days=1),
        at=T0,
    )
    data = b'{"amount":1250}'
    lineage = Lineage()
    for n, kind in enumerate((EntryKind.CREATED, EntryKind.EVALUATED, EntryKind.FROZEN)):
        lineage = lineage.append(
            kind,
            host=HOST_A,
            at=T0 + timedelta(milliseconds=n),
            epoch=1 if kind is EntryKind.FROZEN else 0,
            generation=n,
            data_digest=digest(data),
            credentials_digest=digest(grant.compact.encode()),
            detail="é détail ✓",
        )
    lineage = lineage.sealed(
        object_id=OBJECT,
        host=HOST_A,
        epoch=1,
        at=T0,
        signer=signer,
        to="spiffe://org-b.example/cluster/west/gateway",
        migration="mig-fuzz",
    )
    checkpoint = Checkpoint(
        object_id=OBJECT,
        host=HOST_A,
        epoch=1,
        size=3,
        root=lineage.root(),
        issued_at=T0,
        to="spiffe://org-b.example/cluster/west/gateway",
        migration="mig-fuzz",
    )
    obj = GovernedObject(
        object_id=OBJECT,
        tenant="default",
        data=data,
        content_type="application/json",
        grants=(grant.compact,),
        lineage=lineage,
        cycle=CycleState(
            generation=2, interval=timedelta(seconds=5), next_due=T0 + timedelta(seconds=5)
        ),
        epoch=1,
        state=LifecycleState.FROZEN,
        migration_id="m-1",
    )
    transfer = Transfer(
        migration_id="m-1",
        epoch=1,
        source_host=HOST_A,
        destination_host=HOST_B,
        issued_at=T0,
        expires_at=T0 + timedelta(minutes=2),
        nonce=bytes(range(16)),
        object=obj,
    )
    transfer_raw = wire.encode_transfer(transfer)
    envelope = dsse.seal(transfer_raw, dsse.PayloadType.TRANSFER, [signer])
    receipt = Receipt(
        kind=ReceiptKind.STAGED,
        migration_id="m-1",
        object_id=OBJECT,
        epoch=1,
        host=HOST_B,
        source_host=HOST_A,
        transfer_digest=digest(transfer_raw),
        issued_at=T0,
    )
    authority = EffectiveAuthority(allow=capabilities, deny=CapabilitySet())
    stored = GovernedObject(
        **{**_fields_of(obj), "authority": authority, "authority_expires": T0 + timedelta(days=1)}
    )
    return _World(
        signer=signer,
        trust=trust,
        grant=grant.compact,
        entries=tuple(e.encode() for e in lineage.entries),
        checkpoint=checkpoint.encode(),
        committed_checkpoint=lineage.checkpoints[-1].payload,
        bundle=encode_bundle(bundle),
        signed_bundle=sign_bundle(bundle, [signer]),
        transfer=transfer_raw,
        envelope=wire.encode_envelope(envelope),
        receipt=wire.encode_receipt(receipt),
        stored=wire.encode_object(stored),
        source_record=wire.encode_source_record(
            SourceRecord(
                migration_id="m-1",
                object_id=OBJECT,
                tenant="default",
                destination_host=HOST_B,
                step=SourceStep.FROZEN,
                transfer=wire.encode_envelope(envelope),
                created_at=T0,
                updated_at=T0,
            )
        ),
        destination_record=wire.encode_destination_record(
            DestinationRecord(
                migration_id="m-1",
                object_id=OBJECT,
                tenant="default",
                source_host=HOST_A,
                step=DestinationStep.STAGED,
                transfer_digest=digest(transfer_raw),
                staged=stored,
                created_at=T0,
                updated_at=T0,
            )
        ),
        authority=wire.encode_authority(authority),
        decision=DecisionAnswer(
            migration_id="m-1",
            outcome=Outcome.COMMITTED,
            source=HOST_A,
            destination=HOST_B,
            issued_at=T0,
        ).encode(),
    )


def _fields_of(obj: GovernedObject) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


WORLD = _build_world()
UNKNOWN_ANSWER = UnknownMigrationAnswer(
    migration_id="m-1", source=HOST_A, destination=HOST_B, issued_at=T0
).encode()
OUTBOX_EVENT = Event(
    key="default/obj/000000000001/000",
    tenant="default",
    object_id=OBJECT,
    generation=1,
    rule="overdue",
    verb="publish",
    resource="pubsub:alerts/overdue",
    payload={"invoice": 42},
    created_at=T0,
).encode()

SPEC_EXAMPLE = b"""\
data:
  invoice: 42
  amount: 1250
grant:
  audience: spiffe://org-b.example
  valid_for_days: 30
  capabilities:
    - resource: pubsub:alerts/overdue
      actions: [publish]
  constraints:
    hosts: ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]
    max_hops: 3
cycle:
  interval_seconds: 5
rules:
  - name: overdue
    when: data.amount > 1000
    publish: {topic: alerts/overdue, payload: '{"invoice": data.invoice}'}
"""

_YAML_HOSTILE = (
    "1" * 5000,
    "0x" + "f" * 5000,
    "1e999",
    ".nan",
    ".inf",
    "-.inf",
    "2026-02-30",
    "2026-11-21",
    "0000-01-01",
    "[" * 2000 + "]" * 2000,
    "{a: 1, a: 2}",
    "!!binary AAAA",
    "!!python/object:os.system ls",
    "'\\ud800'",
    '"\\ud800"',
    "~",
    "yes",
    "[1, 2]",
    "{1: 2}",
    "? [a]\n  : b",
    "*undefined",
    "&a [*a]",
    "-1",
    "31622401",
)


def mutate_yaml(raw: bytes, rng: random.Random) -> bytes:
    """Replace one scalar value (the text after a ': ') with a hostile YAML value."""
    lines = raw.decode("utf-8", "surrogateescape").splitlines()
    candidates = [
        i for i, line in enumerate(lines) if ": " in line or line.lstrip().startswith("- ")
    ]
    if not candidates or rng.random() < 0.2:
        return mutate_bytes(raw, rng)
    index = rng.choice(candidates)
    line = lines[index]
    head = line.split(": ", 1)[0] if ": " in line else line[: line.index("- ") + 1]
    lines[index] = (
        f"{head}: {rng.choice(_YAML_HOSTILE)}"
        if ": " in line
        else f"{head} {rng.choice(_YAML_HOSTILE)}"
    )
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


_EVALUATION = gateway_pb2.EvaluateResponse(
    admitted=True,
    decisions=[
        gateway_pb2.CapabilityDecision(
            capability="pubsub:alerts/overdue publish",
            outcome="granted",
            reason="within the ceiling for peer org-a.example",
        ),
        gateway_pb2.CapabilityDecision(capability="state:self read", outcome="denied", reason=""),
    ],
    authority=WORLD.authority,
).SerializeToString()


# --- the targets ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    decode: Callable[[bytes], Any]
    samples: tuple[bytes, ...]
    mutate: Callable[[bytes, random.Random], bytes]
    #: For decoders that accept only one byte form: the encoder that must give back
    #: exactly the bytes of anything the decoder accepted.
    encode: Callable[[Any], bytes] | None = None

    def check(self, raw: bytes) -> bool:
        """Decode ``raw``; True if accepted. Raises AssertionError if an accepted input
        does not re-encode to itself (anything but a GatewayError from decode propagates)."""
        value = self.decode(raw)
        if self.encode is not None:
            again = self.encode(value)
            assert again == raw, f"{self.name}: accepted bytes that re-encode differently"
        return True


def _proto(factory: Callable[[], Message]) -> Callable[[bytes, random.Random], bytes]:
    return lambda raw, rng: mutate_proto(raw, factory, rng)


_TMP = Path(tempfile.mkdtemp(prefix="gateway-fuzz-"))  # config and spec decoders read files
atexit.register(shutil.rmtree, _TMP, True)


def _from_file(load: Callable[[Path], object], name: str) -> Callable[[bytes], object]:
    def decode(raw: bytes) -> object:
        path = _TMP / name
        path.write_bytes(raw)
        return load(path)

    return decode


def _grant(raw: bytes) -> object:
    return verify_grant(raw.decode("utf-8", "replace"), trust=WORLD.trust, at=T0)


def _mutate_grant(raw: bytes, rng: random.Random) -> bytes:
    return mutate_grant_text(raw.decode("utf-8", "replace"), rng).encode()


def _signed_bundle(raw: bytes) -> object:
    accept_bundle(None, raw, at=T0)
    return accept_bundle(decode_bundle(WORLD.bundle), raw, at=T0)


def _mutate_signed_bundle(raw: bytes, rng: random.Random) -> bytes:
    """A bundle with a hostile change, signed by the domain's real bundle key."""
    try:
        payload = dsse.from_json(raw, max_size=1 << 20).payload
    except Exception:  # not even a DSSE envelope any more: mutate its bytes
        return mutate_bytes(raw, rng)
    if rng.random() < 0.2:
        return mutate_json(raw, rng)
    changed = mutate_json(payload, rng)
    return dsse.to_json(dsse.seal(changed, dsse.PayloadType.TRUST_BUNDLE, [WORLD.signer]))


_LINEAGE = wire.decode_object(WORLD.stored).lineage
_ARCHIVE = archive_of(
    object_id=OBJECT,
    tenant="default",
    holder=HOST_A,
    state="active",
    epoch=0,
    exported_at=T0,
    grants=(WORLD.grant,),
    lineage=_LINEAGE,
)


_SEGMENT = Segment(
    object_id=OBJECT, start=0, entries=tuple(entry.encode() for entry in _LINEAGE.entries)
).encode()
_CUSTODY_SEGMENT = CustodySegment(
    object_id=OBJECT,
    first=0,
    departures=tuple(dsse.to_json(c) for c in _LINEAGE.checkpoints) or (b"{}",),
    arrivals=tuple(dsse.to_json(a) for a in _LINEAGE.arrivals) or (b"{}",),
).encode()
_CUSTODY_RECORD = CustodyRecord(
    object_id=OBJECT,
    epoch=3,
    holder=HOST_A,
    sender=HOST_A,
    migration="mig-0123456789abcdef0123456789abcdef",
    issued_at=T0,
    handoffs=2,
).encode()


def _sent_time(raw: bytes) -> object:
    return sent_time(raw.decode("utf-8", "surrogateescape"))


def _audit(raw: bytes) -> object:
    """`gateway verify` on a file: a report, or ConfigError for input it does not read."""
    return audit(raw, [("a.json", WORLD.signed_bundle)], now=T0)


def _mutate_signed_archive(raw: bytes, rng: random.Random) -> bytes:
    """An archive with a hostile change, signed by the exporter's real key."""
    try:
        payload = dsse.from_json(raw, max_size=1 << 24).payload
    except Exception:  # not even a DSSE envelope any more: mutate its bytes
        return mutate_bytes(raw, rng)
    if rng.random() < 0.2:
        return mutate_json(raw, rng)
    changed = mutate_json(payload, rng)
    return dsse.to_json(dsse.seal(changed, ARCHIVE_PAYLOAD_TYPE, [WORLD.signer]))


TARGETS: tuple[Target, ...] = (
    Target(
        "envelope",
        wire.decode_envelope,
        (WORLD.envelope,),
        _proto(envelope_pb2.Envelope),
        wire.encode_envelope,
    ),
    Target(
        "envelope-json",
        lambda raw: dsse.from_json(raw, max_size=1 << 20),
        (dsse.to_json(wire.decode_envelope(WORLD.envelope)),),
        mutate_json,
    ),
    Target(
        "transfer",
        wire.decode_transfer,
        (WORLD.transfer,),
        _proto(object_pb2.Transfer),
        wire.encode_transfer,
    ),
    Target(
        "receipt",
        lambda raw: wire.decode_receipt(raw, ReceiptKind.STAGED),
        (WORLD.receipt,),
        _proto(object_pb2.Receipt),
        wire.encode_receipt,
    ),
    Target("stored-object", wire.decode_object, (WORLD.stored,), _proto(object_pb2.StoredObject)),
    Target("object-cycle", wire.decode_cycle, (WORLD.stored,), _proto(object_pb2.StoredObject)),
    Target("object-head", wire.decode_head, (WORLD.stored,), _proto(object_pb2.StoredObject)),
    Target(
        "source-record",
        wire.decode_source_record,
        (WORLD.source_record,),
        _proto(journal_pb2.SourceRecord),
    ),
    Target(
        "destination-record",
        wire.decode_destination_record,
        (WORLD.destination_record,),
        _proto(journal_pb2.DestinationRecord),
    ),
    Target("authority", wire.decode_authority, (WORLD.authority,), mutate_json),
    # replace(): a copy without the bytes decode() kept, so encode() really re-encodes.
    Target(
        "lineage-entry",
        LineageEntry.decode,
        WORLD.entries,
        mutate_json,
        lambda entry: replace(entry).encode(),
    ),
    Target(
        "checkpoint",
        Checkpoint.decode,
        (WORLD.checkpoint, WORLD.committed_checkpoint),
        mutate_json,
        Checkpoint.encode,
    ),
    Target("grant", _grant, (WORLD.grant.encode(),), _mutate_grant),
    Target("trust-bundle", decode_bundle, (WORLD.bundle,), mutate_json, encode_bundle),
    Target("signed-bundle", _signed_bundle, (WORLD.signed_bundle,), _mutate_signed_bundle),
    Target(
        "decision-answer",
        DecisionAnswer.decode,
        (WORLD.decision,),
        mutate_json,
        DecisionAnswer.encode,
    ),
    Target(
        "unknown-migration-answer",
        UnknownMigrationAnswer.decode,
        (UNKNOWN_ANSWER,),
        mutate_json,
        UnknownMigrationAnswer.encode,
    ),
    Target(
        "outbox-event",
        lambda raw: Event.decode("default/obj/000000000001/000", raw),
        (OUTBOX_EVENT,),
        mutate_json,
    ),
    Target(
        "lineage",
        wire.decode_lineage,
        (wire.encode_lineage(_LINEAGE),),
        _proto(object_pb2.Lineage),
        wire.encode_lineage,
    ),
    Target("object-archive", Archive.decode, (_ARCHIVE,), mutate_json, Archive.encode),
    Target(
        "verify-file",
        _audit,
        (dsse.to_json(dsse.seal(_ARCHIVE, ARCHIVE_PAYLOAD_TYPE, [WORLD.signer])),),
        _mutate_signed_archive,
    ),
    # Session 31: archive segments (read by `gateway verify --archive` from other hosts'
    # directories), a home's custody record, Dapr's job data, invocation body and
    # CloudEvent time.
    # Segments are unsigned (the roots in the object authenticate what they hold), so
    # they need not have one byte form: only "nothing but GatewayErrors" is checked.
    Target("archive-segment", Segment.decode, (_SEGMENT,), mutate_json),
    Target("custody-segment", CustodySegment.decode, (_CUSTODY_SEGMENT,), mutate_json),
    Target(
        "custody-record",
        CustodyRecord.decode,
        (_CUSTODY_RECORD,),
        mutate_json,
        CustodyRecord.encode,
    ),
    Target(
        "job-data",
        job_target,
        (json.dumps({"tenant": "default", "object_id": OBJECT}).encode(),),
        mutate_json,
    ),
    Target(
        "invoke-body",
        _invoke_body,
        (json.dumps({"object": OBJECT, "method": "status", "data": {"a": [1]}}).encode(),),
        mutate_json,
    ),
    Target(
        "cloudevent-time",
        _sent_time,
        (b"2026-12-06T02:52:11Z", b"2026-12-06T04:52:11.123456789+02:00"),
        mutate_bytes,
    ),
    # Session 32: a destination's (unsigned) answer to Evaluate.
    Target(
        "evaluation",
        lambda raw: wire.read_evaluation("spiffe://org-b.example/gw", raw),
        (_EVALUATION,),
        _proto(gateway_pb2.EvaluateResponse),
    ),
    Target("config", _from_file(load_config, "host.yaml"), (CONFIG_EXAMPLE.encode(),), mutate_yaml),
    Target("object-spec", _from_file(load_spec, "spec.yaml"), (SPEC_EXAMPLE,), mutate_yaml),
)
TARGETS_BY_NAME = {target.name: target for target in TARGETS}


def mutant(target: Target, rng: random.Random) -> bytes:
    """One input for ``target``: mostly structured mutants of valid samples, some chains
    of mutations, and some arbitrary bytes."""
    roll = rng.random()
    if roll < 0.08:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    raw = rng.choice(target.samples)
    for _ in range(1 if roll < 0.8 else 2):
        raw = target.mutate(raw, rng)
    return raw
