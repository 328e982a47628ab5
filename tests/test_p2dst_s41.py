"""Session 41, P2's destination: an arrival hashes its grants once; key enums hash in C;
a grant's segments and authority claims are read with fewer Python layers.

The destination's lineage check (``GovernedObject.credentials_digest``) and custody's
rule 4 (:func:`gateway.custody.require_extends_departures`) both need the digest of the
arriving object's grants; each computed it (844 bytes for a P2 object's one grant). Rule
4 now asks the same memo, keyed by the grants' text. These tests hold rule 4 to what it
answered when it hashed every prefix itself: the same outcome and the same refusal
text, over seeded chains and departures (renewals and refusals included).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import enum
import json
import pickle
import random
import string
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from gateway import credentials
from gateway.custody import require_extends_departures
from gateway.errors import CustodyError, GrantFormatError
from gateway.handoff.messages import ReceiptKind
from gateway.handoff.records import DestinationStep, SourceStep
from gateway.keys import Algorithm, Purpose, SignatureEncoding, Signer
from gateway.lineage import credentials_digest
from gateway.model import remembered_credentials_digest
from gateway.transport import server as transport_server
from gateway.trust import TrustBundle

_ALPHABET = string.ascii_letters + string.digits + "-_"


def _grant(rng: random.Random) -> str:
    return ".".join(
        "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(4, k))) for k in (40, 300, 86)
    )


def _plain(
    checkpoints: Sequence[Any], grants: Sequence[str], chain: Any, *, object_id: str
) -> None:
    """Rule 4 as written before the memo: every prefix hashed here."""
    prefixes = {credentials_digest(grants[:n]): n for n in range(len(grants) + 1)}
    longest = len(grants)
    for index in range(len(checkpoints) - 1, -1, -1):
        departure = checkpoints[index]
        recorded = departure.credentials_digest
        length = prefixes.get(recorded)
        if length is not None and length <= longest:
            longest = length
            continue
        renewal = chain.grants[0].replaces if chain is not None else ""
        if renewal and renewal == recorded.hex():
            return
        where = f"when {object_id} left {departure.host} (departure {index})"
        raise CustodyError(
            f"the grants presented do not extend the grants recorded {where}: "
            "a narrowing made on the way was dropped",
            hint="refuse the object; only a renewal by the owner that names the replaced "
            "chain (rpl) may replace its grants",
        )


def _outcome(rule: Any, *args: Any, **kwargs: Any) -> object:
    try:
        rule(*args, **kwargs)
    except CustodyError as exc:
        return ("refused", str(exc), exc.hint)
    return "extends"


def _case(rng: random.Random, index: int) -> tuple[list[Any], tuple[str, ...], Any]:
    grants = tuple(_grant(rng) for _ in range(rng.randint(0, 4)))
    others = tuple(_grant(rng) for _ in range(rng.randint(1, 3)))
    checkpoints = []
    for hop in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.6:  # a prefix of the chain presented (in order or not)
            recorded = credentials_digest(grants[: rng.randint(0, len(grants))])
        elif choice < 0.8:  # a chain that is not a prefix: refused unless renewed
            recorded = credentials_digest(others)
        elif choice < 0.9:  # an old-format or damaged record
            recorded = bytes(rng.randrange(256) for _ in range(rng.choice((0, 31, 32))))
        else:  # the whole chain, with one grant more or one byte off
            recorded = credentials_digest((*grants, others[0]))
        checkpoints.append(SimpleNamespace(credentials_digest=recorded, host=f"h{hop}"))
    chain = None
    if rng.random() < 0.4:
        replaces = rng.choice(
            ["", credentials_digest(others).hex(), checkpoints[0].credentials_digest.hex()]
        )
        chain = SimpleNamespace(grants=[SimpleNamespace(replaces=replaces)])
    if index % 7 == 0:  # the arrival's own check asked first, as the destination does
        remembered_credentials_digest(grants)
    return checkpoints, grants, chain


def test_rule_4_answers_as_when_it_hashed_every_prefix() -> None:
    rng = random.Random(41)
    outcomes: dict[object, int] = {}
    for index in range(600):
        checkpoints, grants, chain = _case(rng, index)
        # A list of grants too (audit passes what it read): the memo's key is a tuple.
        presented: Sequence[str] = list(grants) if index % 5 == 0 else grants
        object_id = f"obj://org-a.example/p2/{index}"
        # (rule 4 reads no lineage: None stands for it)
        got = _outcome(
            require_extends_departures, None, checkpoints, presented, chain, object_id=object_id
        )
        want = _outcome(_plain, checkpoints, grants, chain, object_id=object_id)
        assert got == want, (index, grants, checkpoints)
        kind = got if got == "extends" else "refused"
        outcomes[kind] = outcomes.get(kind, 0) + 1
    # Both answers are well represented, so the comparison means something.
    assert outcomes["extends"] > 150 and outcomes["refused"] > 150, outcomes


def test_an_arrival_hashes_its_grants_once() -> None:
    rng = random.Random(7)
    grants = (_grant(rng),)
    departure = SimpleNamespace(credentials_digest=credentials_digest(grants), host="h")
    remembered_credentials_digest(grants)  # the destination's lineage check
    before = remembered_credentials_digest.cache_info()
    require_extends_departures(
        None,  # type: ignore[arg-type]
        [departure],
        grants,
        None,
        object_id="obj://org-a.example/p2/1",
    )
    after = remembered_credentials_digest.cache_info()
    # The whole chain was a hit; only the empty prefix may be new to the memo.
    assert after.hits - before.hits >= 1
    assert after.misses - before.misses <= 1


@pytest.mark.parametrize("grants", [(), ("a.b.c",), ("a.b.c", "d.e.f")])
def test_a_chain_that_extends_its_own_record_passes(grants: tuple[str, ...]) -> None:
    departure = SimpleNamespace(credentials_digest=credentials_digest(grants), host="h")
    require_extends_departures(
        None,  # type: ignore[arg-type]
        [departure],
        grants,
        None,
        object_id="obj://org-a.example/p2/2",
    )


# --- keys: members hashed as the singletons they are ----------------------------------


#: Enums hashed as the singletons they are (``__hash__ = object.__hash__``): the key
#: enums (session 41) and the handoff's steps and receipt kinds (session 42).
_SINGLETON_ENUMS = [
    Algorithm,
    Purpose,
    SignatureEncoding,
    SourceStep,
    DestinationStep,
    ReceiptKind,
]


@pytest.mark.parametrize("enum_type", _SINGLETON_ENUMS)
def test_hashing_a_key_enum_member_runs_no_python_code(enum_type: type[enum.Enum]) -> None:
    """Every signature checked or made looks these up in dicts and sets; Enum's own
    ``__hash__`` is a Python function (about 1,300 instructions a call)."""
    calls: list[str] = []

    def watch(frame: object, event: str, arg: object) -> None:
        if event == "call":
            calls.append(event)

    members = list(enum_type)
    sys.setprofile(watch)
    try:
        for member in members:
            hash(member)
    finally:
        sys.setprofile(None)
    assert calls == []


@pytest.mark.parametrize("enum_type", _SINGLETON_ENUMS)
def test_key_enum_members_are_found_by_value_in_dicts_and_sets(
    enum_type: type[enum.Enum],
) -> None:
    members = list(enum_type)
    by_member = {member: member.value for member in members}
    assert [by_member[enum_type(member.value)] for member in members] == [m.value for m in members]
    assert all(enum_type(member.value) in frozenset(members) for member in members)
    assert all(pickle.loads(pickle.dumps(member)) in set(members) for member in members)
    assert len({hash(member) for member in members}) == len(members)


def test_algorithms_name_their_jose_alg() -> None:
    assert [(a, a.jose) for a in Algorithm] == [
        (Algorithm.ED25519, "EdDSA"),
        (Algorithm.ECDSA_P256_SHA256, "ES256"),
    ]


# --- credentials: base64url and the authority claims' text ----------------------------


def _plain_b64url(segment: str, what: str) -> bytes:
    """credentials._b64url_decode as written with base64.urlsafe_b64decode."""
    if not credentials._B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise GrantFormatError(f"grant {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise GrantFormatError(f"grant {what} is not base64url") from exc
    last = credentials._CANONICAL_LAST.get(len(segment) % 4)
    if last is not None and segment[-1] not in last:
        raise GrantFormatError(
            f"grant {what} is not canonical base64url",
            hint="the grant was re-encoded or tampered with; ask its issuer for the original",
        )
    return raw


def _decoded(decode: Any, segment: str) -> object:
    try:
        return decode(segment, "payload")
    except GrantFormatError as exc:
        return ("refused", str(exc), exc.hint)


def _segments(rng: random.Random) -> list[str]:
    found = []
    odd = "+/=. \n\té\x00"
    for _ in range(4000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        segment = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        choice = rng.random()
        if choice < 0.3 and segment:  # one character replaced (maybe outside the alphabet)
            at = rng.randrange(len(segment))
            letter = rng.choice(_ALPHABET + odd)
            segment = segment[:at] + letter + segment[at + 1 :]
        elif choice < 0.4:  # one more or one fewer character
            segment = segment + rng.choice(_ALPHABET) if rng.random() < 0.5 else segment[:-1]
        elif choice < 0.45:  # padded, or a standard-alphabet spelling
            segment = base64.b64encode(raw).decode()
        found.append(segment)
    return found


def test_base64url_segments_decode_and_are_refused_as_before() -> None:
    outcomes: dict[str, int] = {}
    for segment in _segments(random.Random(41)):
        got = _decoded(credentials._b64url_decode, segment)
        assert got == _decoded(_plain_b64url, segment), segment
        kind = "refused" if isinstance(got, tuple) else "decoded"
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes["decoded"] > 2000 and outcomes["refused"] > 500, outcomes


def _claim_values(rng: random.Random) -> Iterator[tuple[object, object]]:
    atoms: list[object] = [
        0, 1, -7, 2**53, True, False, None, 1.5, float("nan"), float("inf"),
        "", "state:self", "pubsub:alerts/*", "é", "\u2028", "a\"b\\c",
    ]  # fmt: skip
    for _ in range(600):
        cap = [
            {"resource": rng.choice(atoms), "actions": rng.sample(atoms, rng.randint(0, 3))}
            for _ in range(rng.randint(0, 3))
        ]
        cons: object = {"max_hops": rng.choice(atoms), rng.choice(["a", "é", "z"]): [1, "x"]}
        if rng.random() < 0.1:
            cons = rng.choice(atoms)  # not an object: never remembered
        yield cap, cons


def test_the_authority_claims_are_keyed_by_the_text_json_dumps_wrote() -> None:
    seen_none = seen_text = 0
    for cap, cons in _claim_values(random.Random(5)):
        if isinstance(cons, dict):
            try:
                want: str | None = json.dumps(
                    [cap, cons], ensure_ascii=False, separators=(",", ":"), allow_nan=False
                )
            except (TypeError, ValueError, RecursionError):
                want = None
        else:
            want = None
        got = credentials._authority_key(cap, cons)  # type: ignore[arg-type]
        assert got == want
        seen_none += got is None
        seen_text += got is not None
    assert seen_none > 50 and seen_text > 300, (seen_none, seen_text)


# --- trust: a bundle's key by id ------------------------------------------------------


def test_a_bundle_finds_the_record_with_the_id_or_none() -> None:
    signers = [Signer.generate() for _ in range(3)]
    at = datetime(2026, 12, 7, tzinfo=UTC)
    records = [s.record(purposes=[Purpose.ENVELOPE], hosts=["*"], valid_from=at) for s in signers]
    bundle = TrustBundle(
        trust_domain="org-a.example", keys=tuple(records), sequence=1, issued_at=at
    )
    assert [bundle.key(r.key_id) for r in records] == records
    assert [bundle.key(r.key_id) for r in bundle.keys] == list(bundle.keys)
    assert bundle.key("0" * 64) is None
    assert bundle.key("") is None


def test_a_grants_signing_time_is_the_last_moment_of_its_iat_second() -> None:
    rng = random.Random(3)
    for _ in range(500):
        issued = datetime.fromtimestamp(rng.randrange(0, 2**33), UTC)
        grant = SimpleNamespace(issued_at=issued)
        want = issued + timedelta(seconds=1) - timedelta(microseconds=1)
        assert credentials._signed_at(grant) == want  # type: ignore[arg-type]


# --- transport: the RPC's metadata as grpc.aio converted it for the handler lookup ----


def _echo_server_handlers() -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # Other calls' tasks run meanwhile, each with its own metadata.
        for _ in range(int(request) % 4):
            await asyncio.sleep(0)
        kept = transport_server._call_metadata(context)
        asked = tuple(context.invocation_metadata() or ())
        return json.dumps([kept == asked, dict(kept).get("x-call")]).encode()

    inner = grpc.method_handlers_generic_handler(
        "t.T",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=bytes, response_serializer=bytes
            )
        },
    )
    unused = grpc.unary_unary_rpc_method_handler(echo)
    return transport_server._Replacing(inner, unused, None)  # type: ignore[arg-type]


def test_each_rpc_is_handed_its_own_metadata_by_the_handler_lookup() -> None:
    """Against a real grpc.aio server, 300 calls at once, each with its own metadata."""

    async def main() -> list[object]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_echo_server_handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                echo = channel.unary_unary(
                    "/t.T/Echo", request_serializer=bytes, response_deserializer=bytes
                )
                rng = random.Random(9)

                async def one(index: int) -> object:
                    metadata = (("x-call", str(index)), ("x-pad", "p" * rng.randrange(64)))
                    answer = await echo(str(index).encode(), metadata=metadata)
                    return json.loads(answer)

                return await asyncio.gather(*(one(i) for i in range(300)))
        finally:
            await server.stop(None)

    answers = asyncio.run(main())
    assert answers == [[True, str(index)] for index in range(300)]


def test_without_a_lookup_the_context_is_asked() -> None:
    class Context:
        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return (("x-call", "asked"),)

    found = contextvars.copy_context().run(transport_server._call_metadata, Context())
    assert found == (("x-call", "asked"),)
