"""Session 35, P4: every shortcut verify_lineage takes is equivalent to the check it
replaced. Each test here fails if its shortcut were wrong: it compares the fast path
with the reference (the entry-by-entry loop, the strict parser, a tree built from
scratch, the part-by-part hash) over seeded changes at every position, and checks that
a tampered entry, checkpoint or signature is still refused.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace

import pytest

# The benchmark's own history (hops alternate A and B, each ends in a freeze), at small sizes.
from bench.bench_lineage import OBJECT, SIGNERS, T0, TRUST, A, B, build
from gateway import envelope as dsse
from gateway import lineage as lineage_module
from gateway import merkle
from gateway.errors import BadSignatureError, GatewayError, LineageError
from gateway.keys import (
    VERIFIED_SIGNATURES,
    Algorithm,
    Purpose,
    SignatureEncoding,
    Signer,
    _VerifiedSignatures,
    forget_verified_signatures,
)
from gateway.lineage import (
    Checkpoint,
    EntryKind,
    Lineage,
    LineageEntry,
    forget_decoded_entries,
    forget_verified_prefixes,
    verify_chain,
    verify_lineage,
)
from gateway.trust import canonical_json


def fresh(lineage: Lineage) -> Lineage:
    """The lineage decoded again from its entries' bytes, with every memo emptied: what a
    receiver that never saw the object verifies."""
    forget_decoded_entries()
    forget_verified_signatures()
    forget_verified_prefixes()
    entries = [LineageEntry.decode(e.encode()) for e in lineage.entries]
    return Lineage(entries=entries, checkpoints=lineage.checkpoints)


# --- verify_chain: the whole-list checks against the entry-by-entry loop ---------------


def reference_chain(
    entries: list[LineageEntry], *, start: int = 0, head: bytes = b"", epoch: int = 0
) -> list[bytes] | str:
    """The rules of verify_chain, one entry at a time: the leaf hashes, or the first
    entry that breaks one (as the message names it)."""
    hashes: list[bytes] = []
    previous_hash, previous_epoch = head, epoch
    for seq, entry in enumerate(entries, start=start):
        if entry.seq != seq:
            return f"entry {seq} has sequence number"
        if entry.prev != previous_hash:
            return f"entry {seq} does not link"
        if seq == 0:
            if entry.kind is not EntryKind.CREATED or entry.epoch != 0:
                return "does not start with the object's creation"
        elif entry.epoch != previous_epoch + (entry.kind is EntryKind.FROZEN):
            return f"entry {seq} ({entry.kind.value}) is at epoch"
        previous_epoch = entry.epoch
        previous_hash = merkle.leaf_hash(entry.encode())
        hashes.append(previous_hash)
    return hashes


def relinked(entries: list[LineageEntry], head: bytes = b"") -> list[LineageEntry]:
    """``entries`` with every prev link rebuilt, so only the change made breaks a rule."""
    out: list[LineageEntry] = []
    previous = head
    for entry in entries:
        entry = replace(entry, prev=previous)
        out.append(LineageEntry.decode(entry.encode()))
        previous = out[-1].leaf_hash()
    return out


def check_chain_agrees(entries: list[LineageEntry], **where: object) -> None:
    expected = reference_chain(entries, **where)  # type: ignore[arg-type]
    for entry in entries:
        object.__setattr__(entry, "_leaf", None)  # nothing remembered from before
    if isinstance(expected, str):
        with pytest.raises(LineageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            verify_chain(entries, **where)  # type: ignore[arg-type]
    else:
        assert verify_chain(entries, **where) == expected  # type: ignore[arg-type]
        assert [e.leaf_hash() for e in entries] == expected  # remembered, and right


CHAIN = list(build(24, 3).entries)


CHANGES = (
    "seq+1",
    "seq-1",
    "epoch+1",
    "epoch-1",
    "frozen",
    "unfrozen",
    "frozen and raised",
    "created",
    "prev",
)


def _applies(position: int, change: str) -> bool:
    """ "frozen and raised" turns a non-freeze after the creation into a freeze."""
    return change != "frozen and raised" or (
        position > 0 and CHAIN[position].kind is not EntryKind.FROZEN
    )


@pytest.mark.parametrize(
    ("position", "change"),
    [(p, c) for c in CHANGES for p in range(len(CHAIN)) if _applies(p, c)],
)
def test_verify_chain_refuses_exactly_what_the_entry_loop_refuses(
    position: int, change: str
) -> None:
    """Each rule broken at each position (links rebuilt, so only that rule breaks), and
    the changes that keep every rule ("frozen and raised" at a non-freeze raises the
    epoch as a freeze must, and the later entries follow): the fast whole-list path
    accepts and refuses exactly as the entry-by-entry loop does."""
    entries = list(CHAIN)
    entry = entries[position]
    if change == "seq+1":
        entry = replace(entry, seq=entry.seq + 1)
    elif change == "seq-1":
        entry = replace(entry, seq=max(entry.seq - 1, 0) if entry.seq else 1)
    elif change == "epoch+1":
        entry = replace(entry, epoch=entry.epoch + 1)
    elif change == "epoch-1":
        entry = replace(entry, epoch=abs(entry.epoch - 1))
    elif change == "frozen":
        entry = replace(entry, kind=EntryKind.FROZEN)
    elif change == "unfrozen":
        entry = replace(entry, kind=EntryKind.UPDATED)
    elif change == "frozen and raised":
        entry = replace(entry, kind=EntryKind.FROZEN, epoch=entry.epoch + 1)
        entries[position] = entry
        for later in range(position + 1, len(entries)):  # every later epoch one higher
            entries[later] = replace(entries[later], epoch=entries[later].epoch + 1)
    elif change == "created":
        entry = replace(entry, kind=EntryKind.CREATED)
    elif change == "prev":
        entry = replace(entry, prev=hashlib.sha256(entry.prev).digest())
    entries[position] = entry
    if change != "prev":
        entries = relinked(entries)
    else:
        entries = [LineageEntry.decode(e.encode()) for e in entries]
    check_chain_agrees(entries)
    if change == "frozen and raised":
        assert isinstance(reference_chain(entries), list)  # the case that must pass


def test_verify_chain_agrees_on_a_continued_history() -> None:
    """After a base (start, head, epoch): an epoch that does not continue the base's,
    a first sequence number or link that does not, all refused as the loop refuses."""
    tail = CHAIN[10:]
    head, epoch = CHAIN[9].leaf_hash(), CHAIN[9].epoch
    check_chain_agrees(list(tail), start=10, head=head, epoch=epoch)
    check_chain_agrees(list(tail), start=10, head=head, epoch=epoch + 1)
    check_chain_agrees(list(tail), start=10, head=head, epoch=max(epoch - 1, 0))
    check_chain_agrees(list(tail), start=11, head=head, epoch=epoch)
    check_chain_agrees(list(tail), start=10, head=CHAIN[8].leaf_hash(), epoch=epoch)
    check_chain_agrees([], start=10, head=head, epoch=epoch)
    # Entries 2.. are at epoch 0 until the first freeze: continuing a base at epoch 1
    # they are refused (every epoch counts from the base's), at epoch 0 accepted.
    check_chain_agrees(list(CHAIN[2:]), start=2, head=CHAIN[1].leaf_hash(), epoch=1)
    check_chain_agrees(list(CHAIN[2:]), start=2, head=CHAIN[1].leaf_hash(), epoch=0)
    assert isinstance(reference_chain(list(CHAIN[2:]), start=2, head=CHAIN[1].leaf_hash()), list)


def test_verify_chain_hashes_entries_never_encoded() -> None:
    """Entries built by their constructor (no bytes held) are encoded and hashed, and
    a mixture of held and unheld bytes is handled the same way."""
    built = [replace(e) for e in CHAIN]  # constructor-built: _raw unset
    check_chain_agrees(built)
    mixed = [LineageEntry.decode(e.encode()) if i % 2 else replace(e) for i, e in enumerate(CHAIN)]
    check_chain_agrees(mixed)


# --- merkle: level-by-level tree heads against trees built from scratch ----------------


@pytest.mark.parametrize("size", [*range(0, 70), 127, 128, 129, 255, 256, 257, 1000])
def test_compact_range_heads_match_trees_built_from_scratch(size: int) -> None:
    """append_leaves (the zip-paired levels, the inlined root folds) gives, at every stop,
    the root merkle.root computes from the leaves alone; and changing any one leaf
    changes every head at or after it (a tampered node never goes unseen)."""
    rng = random.Random(size)
    leaves = [rng.randbytes(32) for _ in range(size)]
    stops = set(range(1, size + 1)) if size <= 300 else set(rng.sample(range(1, size + 1), 40))
    heads = merkle.CompactRange().append_leaves(leaves, stops)
    assert heads == {stop: merkle.root(leaves[:stop]) for stop in stops}
    if size:
        position = rng.randrange(size)
        tampered = list(leaves)
        tampered[position] = hashlib.sha256(tampered[position]).digest()
        again = merkle.CompactRange().append_leaves(tampered, stops)
        assert all(again[stop] != heads[stop] for stop in stops if stop > position)


@pytest.mark.parametrize("position", range(9))
@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_compact_range_still_names_a_leaf_hash_of_the_wrong_length(
    position: int, length: int
) -> None:
    leaves = [bytes([n]) * 32 for n in range(9)]
    leaves[position] = b"x" * length
    with pytest.raises(ValueError, match=f"leaf hash {position} is {length} bytes"):
        merkle.CompactRange().append_leaves(leaves)
    grown = merkle.CompactRange()
    grown.append(bytes(32))  # the leaf-by-leaf path (not from an empty range)
    with pytest.raises(ValueError, match=f"leaf hash {position} is {length} bytes"):
        grown.append_leaves(leaves)


# --- checkpoints: the fast decoder against the strict parser ---------------------------


def strict_decode(raw: bytes) -> Checkpoint | str:
    """Checkpoint.decode with the fast path off: the checkpoint, or the refusal."""
    original = lineage_module._decode_checkpoint_fast
    lineage_module._decode_checkpoint_fast = lambda cls, raw: None  # type: ignore[assignment]
    try:
        return Checkpoint.decode(raw)
    except LineageError as exc:
        return str(exc)
    finally:
        lineage_module._decode_checkpoint_fast = original


def fast_or_strict(raw: bytes) -> Checkpoint | str:
    try:
        return Checkpoint.decode(raw)
    except LineageError as exc:
        return str(exc)


def checkpoint_documents() -> list[dict[str, object]]:
    """One document of each format: the first (no grants), the second (grants, also
    empty), the third (custody commitment), with host ids that need escaping."""
    second: dict[str, object] = {
        "object_id": OBJECT,
        "host": A,
        "epoch": 3,
        "size": 120,
        "root": "ab" * 32,
        "issued_at": "2026-11-21T12:01:00.250Z",
        "to": B,
        "migration": "mig-7.a_b",
        "credentials_digest": "cd" * 32,
    }
    first = {k: v for k, v in second.items() if k != "credentials_digest"}
    empty = {**second, "credentials_digest": ""}
    third = {**second, "custody": "ef" * 32, "hops": 4}
    odd = {**third, "host": 'spiffe://org-a.example/é"\\\u2028/x', "object_id": OBJECT + "/ü€𝄞"}
    return [first, second, empty, third, odd]


def test_checkpoint_bytes_are_canonical_json() -> None:
    """The written-out encoder and canonical_json agree on every format, strings that
    need escaping included (what makes the fast path's comparison the canonical check)."""
    for document in checkpoint_documents():
        raw = canonical_json(document)
        decoded = strict_decode(raw)
        if isinstance(decoded, str):  # the odd host id is refused, as always
            assert "host" not in document or document["host"] != A
            continue
        legacy = "credentials_digest" not in document
        committed = "custody" in document
        assert lineage_module._checkpoint_bytes(decoded, legacy=legacy, committed=committed) == raw
        assert Checkpoint.decode(raw) == decoded


def mutations(raw: bytes, rng: random.Random) -> list[bytes]:
    """Bytes one edit away from ``raw``: each byte replaced, dropped and doubled at
    seeded positions, and the spellings a canonical form rules out."""
    text = raw.decode()
    out = []
    for position in rng.sample(range(len(raw)), min(len(raw), 60)):
        out.append(raw[:position] + bytes([rng.randrange(32, 127)]) + raw[position + 1 :])
        out.append(raw[:position] + raw[position + 1 :])
        out.append(raw[:position] + raw[position : position + 1] * 2 + raw[position + 1 :])
    document = json.loads(text)
    spellings = [
        text.replace(":", ": ", 1),
        text.replace(".250Z", ".250+00:00"),
        text.replace(".250Z", ".25Z"),
        text.replace(".250Z", "Z"),
        text.replace("2026-11-21T", "2026-11-21 "),
        text.replace("ab" * 32, "AB" * 32),
        text.replace("ab" * 32, "ab " * 31 + "ab"),
        text.replace("ab" * 32, "ab" * 33),
        text.replace("ab" * 32, "ab" * 31),
        text.replace("cd" * 32, "cd" * 33),
        text.replace("cd" * 32, ""),
        text.replace("ef" * 32, "ef" * 31),
        text.replace("ef" * 32, ""),
        text.replace('"epoch":3', '"epoch":3.0'),
        text.replace('"epoch":3', '"epoch":true'),
        text.replace('"epoch":3', '"epoch":-3'),
        text.replace('"epoch":3', '"epoch":03'),
        text.replace('"epoch":3', '"epoch":' + "9" * 70),
        text.replace('"size":120', '"size":"120"'),
        text.replace('"hops":4', '"hops":0'),
        text.replace('"hops":4', '"hops":' + str(2**41)),
        text.replace('"mig-7.a_b"', '"mig 7"'),
        text.replace(f'"to":"{B}"', '"to":"not a host"'),
        text.replace('"host"', '"host","host":"x"', 1),
        text.replace("spiffe://", "spiffe:\\/\\/"),
        text.replace("e", "\\u0065", 1),
        text + " ",
        " " + text,
        json.dumps(document, sort_keys=False),
        json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True),
        json.dumps({**document, "extra": 1}, sort_keys=True, separators=(",", ":")),
    ]
    out.extend(s.encode() for s in spellings if s != text)
    out.append(text.replace("e", "\\ud800", 1).encode())  # a lone surrogate
    out.append(raw[:10] + b"\xff" + raw[11:])  # not UTF-8
    return out


@pytest.mark.parametrize("format_index", range(4))
def test_checkpoint_fast_path_accepts_exactly_what_the_strict_parser_accepts(
    format_index: int,
) -> None:
    """Over seeded one-byte edits and every non-canonical spelling, the fast decoder and
    the strict parser give the same checkpoint or the same refusal."""
    document = checkpoint_documents()[format_index]
    raw = canonical_json(document)
    rng = random.Random(format_index)
    accepted = 0
    for changed in [raw, *mutations(raw, rng)]:
        expected = strict_decode(changed)
        assert fast_or_strict(changed) == expected, changed
        if lineage_module._decode_checkpoint_fast(Checkpoint, changed) is not None:
            assert not isinstance(expected, str), changed  # accepted only what is accepted
            accepted += 1
    assert accepted >= 1  # the canonical bytes take the fast path


# --- the memory of verified signatures -------------------------------------------------


def test_signature_memo_digest_is_injective_over_part_boundaries() -> None:
    """Moving bytes from one part to the next never gives the same digest (the lengths
    are hashed), nor does another algorithm or encoding."""
    rng = random.Random(35)
    parts = [rng.randbytes(n) for n in (44, 0, 0, 40, 64)]
    seen = set()
    for cut in range(1, 40):
        message = parts[3][:cut]
        signature = parts[3][cut:] + parts[4]
        key = _VerifiedSignatures.digest(
            parts[0], Algorithm.ED25519, SignatureEncoding.DER, message, signature
        )
        seen.add(key)
    assert len(seen) == 39
    one = _VerifiedSignatures.digest(
        parts[0], Algorithm.ED25519, SignatureEncoding.DER, parts[3], parts[4]
    )
    assert one != _VerifiedSignatures.digest(
        parts[0], Algorithm.ED25519, SignatureEncoding.P1363, parts[3], parts[4]
    )
    assert one != _VerifiedSignatures.digest(
        parts[0], Algorithm.ECDSA_P256_SHA256, SignatureEncoding.DER, parts[3], parts[4]
    )
    assert one != _VerifiedSignatures.digest(
        parts[0] + parts[3][:1], Algorithm.ED25519, SignatureEncoding.DER, parts[3][1:], parts[4]
    )


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_a_remembered_signature_answers_only_its_own_key_message_and_signature(
    algorithm: Algorithm,
) -> None:
    """With the memo warm, every one-byte change of the message or the signature, and
    the other key, is verified afresh and refused."""
    forget_verified_signatures()
    signer, other = Signer.generate(algorithm), Signer.generate(algorithm)
    record = signer.record(purposes=[Purpose.ENVELOPE], valid_from=T0)
    stranger = other.record(purposes=[Purpose.ENVELOPE], valid_from=T0)
    message = dsse.pae(dsse.PayloadType.CHECKPOINT, b'{"a":1}' * 20)
    signature = signer.sign(message)
    record.verify(message, signature)
    assert len(VERIFIED_SIGNATURES) == 1
    record.verify(message, signature)  # remembered
    rng = random.Random(algorithm.value)
    for position in rng.sample(range(len(message)), 40):
        changed = bytearray(message)
        changed[position] ^= 1 << rng.randrange(8)
        with pytest.raises(BadSignatureError):
            record.verify(bytes(changed), signature)
    for position in range(len(signature)):
        changed = bytearray(signature)
        changed[position] ^= 0x01
        with pytest.raises(BadSignatureError):
            record.verify(message, bytes(changed))
    with pytest.raises(BadSignatureError):
        stranger.verify(message, signature)
    assert len(VERIFIED_SIGNATURES) == 1  # only the success was remembered


# --- verify_lineage end to end -----------------------------------------------------------


LINEAGE = build(40, 4)


def test_the_small_lineage_verifies() -> None:
    verified = verify_lineage(fresh(LINEAGE), object_id=OBJECT, trust=TRUST, sealed=True)
    assert verified.size == 40 and len(verified.checkpoints) == 4
    assert verified.root == merkle.root([e.leaf_hash() for e in LINEAGE.entries])


@pytest.mark.parametrize("position", range(40))
def test_a_changed_entry_is_refused_at_every_position(position: int) -> None:
    """An entry's detail changed (its bytes re-encoded canonically), at every position:
    the next link breaks, or for the last entry its checkpoint's root."""
    entries = [LineageEntry.decode(e.encode()) for e in LINEAGE.entries]
    entries[position] = LineageEntry.decode(replace(entries[position], detail="rewritten").encode())
    tampered = Lineage(entries=entries, checkpoints=LINEAGE.checkpoints)
    forget_verified_signatures()
    forget_verified_prefixes()
    with pytest.raises(LineageError, match=r"does not link|does not match the entries"):
        verify_lineage(tampered, object_id=OBJECT, trust=TRUST, sealed=True)


def resigned(index: int, payload: bytes) -> Lineage:
    """LINEAGE with checkpoint ``index`` carrying ``payload``, validly signed by its host."""
    host = A if index % 2 == 0 else B
    envelope = dsse.seal(payload, dsse.PayloadType.CHECKPOINT, [SIGNERS[host]])
    checkpoints = list(LINEAGE.checkpoints)
    checkpoints[index] = envelope
    return Lineage(entries=list(LINEAGE.entries), checkpoints=tuple(checkpoints))


@pytest.mark.parametrize("index", range(4))
def test_a_changed_checkpoint_is_refused_at_every_position(index: int) -> None:
    """A checkpoint's payload changed and signed again by the right key: another root,
    size, object, a non-canonical spelling, each refused with what is wrong; its
    signature changed (not signed again): refused as a bad signature."""
    original = LINEAGE.checkpoints[index].payload
    document = json.loads(original)
    cases = {
        "does not match the entries": {**document, "root": "00" * 32},
        "covers": {**document, "size": document["size"] + 1000},
        f"is for {OBJECT}/x": {**document, "object_id": OBJECT + "/x"},
    }
    for reason, changed in cases.items():
        lineage = fresh(resigned(index, canonical_json(changed)))
        with pytest.raises(LineageError, match=reason.replace("/", ".")):
            verify_lineage(lineage, object_id=OBJECT, trust=TRUST, sealed=True)
    spaced = json.dumps(document, sort_keys=True).encode()  # ", " and ": "
    with pytest.raises(LineageError, match="canonical form"):
        verify_lineage(fresh(resigned(index, spaced)), object_id=OBJECT, trust=TRUST, sealed=True)
    envelope = LINEAGE.checkpoints[index]
    bad = bytearray(envelope.signatures[0].sig)
    bad[index] ^= 0x01
    broken = replace(envelope, signatures=(replace(envelope.signatures[0], sig=bytes(bad)),))
    checkpoints = list(LINEAGE.checkpoints)
    checkpoints[index] = broken
    lineage = fresh(Lineage(entries=list(LINEAGE.entries), checkpoints=tuple(checkpoints)))
    with pytest.raises(BadSignatureError):
        verify_lineage(lineage, object_id=OBJECT, trust=TRUST, sealed=True)


def test_refusals_are_gateway_errors() -> None:
    """What the fast paths refuse still leaves as a GatewayError naming the problem."""
    for raw in (b"", b"{", b"[]", b'{"a":1}', b"\xff"):
        with pytest.raises(GatewayError, match="checkpoint"):
            Checkpoint.decode(raw)
