"""Tests for gateway.merkle: public vectors, known answers, and properties.

Known answers come from transparency-dev/merkle (the Go reference), commit 417fb0c3:
``testonly/constants.go`` (leaf inputs, leaf hashes, roots of every size) — the same
tree the RFC 6962 C++ and Go test suites use. None of them was computed with this code.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import merkle
from gateway.errors import LineageError, MerkleProofError
from gateway.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from tests.conftest import VECTORS as SHARED_VECTORS
from tests.conftest import vectors_missing

VECTORS = SHARED_VECTORS / "merkle"

# The vendored testdata (commit 417fb0c3) has 98 files of each kind. Pinning the count
# makes a truncated or half-copied vectors folder fail instead of quietly testing less.
EXPECTED_VECTOR_FILES = {"inclusion": 98, "consistency": 98}

# Files whose expectation we do not share, and why. The Go reference compares the
# roots of equal-size trees as opaque bytes; we require every hash to be 32 bytes, so
# the 12-byte placeholder roots ("don't care 2") are refused.
STRICTER_THAN_REFERENCE = {
    "consistency/additional/sizes-are-equal-one-and-proof-is-empty.json": (
        "roots are 12-byte placeholders; gateway.merkle requires 32-byte hashes"
    ),
}

# --- known answers (transparency-dev/merkle testonly/constants.go) -----------------------

REFERENCE_LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

# NodeHashes()[0]: the leaf hashes of REFERENCE_LEAF_INPUTS.
REFERENCE_LEAF_HASHES = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    )
]

# RootHashes(): index = tree size, 0 through 8.
REFERENCE_ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


# --- public vectors ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VectorFile:
    kind: str  # "inclusion" or "consistency"
    name: str  # path relative to the merkle vectors folder, the test id
    data: dict[str, Any]


def _load_vectors(kind: str) -> list[VectorFile]:
    folder = VECTORS / kind
    if not folder.is_dir():
        return []
    return [
        VectorFile(
            kind=kind,
            name=path.relative_to(VECTORS).as_posix(),
            data=json.loads(path.read_text(encoding="utf-8")),
        )
        for path in sorted(folder.rglob("*.json"))
    ]


INCLUSION_VECTORS = _load_vectors("inclusion")
CONSISTENCY_VECTORS = _load_vectors("consistency")


def _params(vectors: list[VectorFile]) -> list[Any]:
    # An empty parameter list would make pytest skip the test silently; a missing folder
    # becomes one case that skips naming the variable (or fails, in CI: conftest).
    if not vectors:
        return [pytest.param(None, id="vectors-missing")]
    return [pytest.param(v, id=v.name) for v in vectors]


def _require(vector: VectorFile | None) -> VectorFile:
    if vector is None:
        vectors_missing("RFC 9162 Merkle test vectors (merkle/inclusion, merkle/consistency)")
    return vector


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "", validate=True)


def _b64_list(values: list[str] | None) -> list[bytes]:
    # Go marshals a nil proof as null; it means an empty proof.
    return [_b64(v) for v in values or []]


def _run_inclusion(data: dict[str, Any]) -> None:
    verify_inclusion(
        leaf_hash=_b64(data["leafHash"]),
        index=data["leafIdx"],
        tree_size=data["treeSize"],
        proof=_b64_list(data["proof"]),
        root=_b64(data["root"]),
    )


def _run_consistency(data: dict[str, Any]) -> None:
    verify_consistency(
        old_size=data["size1"],
        new_size=data["size2"],
        old_root=_b64(data["root1"]),
        new_root=_b64(data["root2"]),
        proof=_b64_list(data["proof"]),
    )


def _check_vector(vector: VectorFile, run: Callable[[dict[str, Any]], None]) -> None:
    data = vector.data
    assert isinstance(data["wantErr"], bool), "every vector states wantErr"
    if data["wantErr"] or vector.name in STRICTER_THAN_REFERENCE:
        with pytest.raises(MerkleProofError):
            run(data)
    else:
        run(data)


def test_vector_folders_are_complete() -> None:
    found = {"inclusion": len(INCLUSION_VECTORS), "consistency": len(CONSISTENCY_VECTORS)}
    if not any(found.values()):
        vectors_missing("RFC 9162 Merkle test vectors (merkle/inclusion, merkle/consistency)")
    assert found == EXPECTED_VECTOR_FILES, f"Merkle vectors under {VECTORS} are incomplete"


@pytest.mark.parametrize("vector", _params(INCLUSION_VECTORS))
def test_inclusion_vector(vector: VectorFile | None) -> None:
    _check_vector(_require(vector), _run_inclusion)


@pytest.mark.parametrize("vector", _params(CONSISTENCY_VECTORS))
def test_consistency_vector(vector: VectorFile | None) -> None:
    _check_vector(_require(vector), _run_consistency)


def test_stricter_cases_fail_only_on_hash_length() -> None:
    """Each deliberate difference from the reference is about hash length, nothing else."""
    if not CONSISTENCY_VECTORS:
        vectors_missing("RFC 9162 Merkle test vectors (merkle/consistency)")
    by_name = {v.name: v for v in CONSISTENCY_VECTORS}
    for name in STRICTER_THAN_REFERENCE:
        data = dict(by_name[name].data)
        assert data["wantErr"] is False
        assert len(_b64(data["root1"])) != 32
        # The same case with a well-formed root verifies.
        data["root1"] = data["root2"] = base64.b64encode(REFERENCE_ROOTS[1]).decode()
        _run_consistency(data)


def _happy_paths(vectors: list[VectorFile]) -> list[dict[str, Any]]:
    if not vectors:
        vectors_missing("RFC 9162 Merkle test vectors (merkle/inclusion, merkle/consistency)")
    happy = [v.data for v in vectors if v.name.endswith("/happy-path.json")]
    assert happy, "the vectors have happy-path cases"
    return happy


def test_inclusion_happy_paths_are_the_reference_tree() -> None:
    """Ties the vectors to the known answers, and our proof builder to both."""
    for data in _happy_paths(INCLUSION_VECTORS):
        size, index = data["treeSize"], data["leafIdx"]
        assert _b64(data["root"]) == REFERENCE_ROOTS[size]
        assert _b64(data["leafHash"]) == REFERENCE_LEAF_HASHES[index]
        proof = inclusion_proof(REFERENCE_LEAF_HASHES[:size], index)
        assert proof == _b64_list(data["proof"])


def test_consistency_happy_paths_are_the_reference_tree() -> None:
    for data in _happy_paths(CONSISTENCY_VECTORS):
        old_size, new_size = data["size1"], data["size2"]
        assert _b64(data["root1"]) == REFERENCE_ROOTS[old_size]
        assert _b64(data["root2"]) == REFERENCE_ROOTS[new_size]
        proof = consistency_proof(REFERENCE_LEAF_HASHES[:new_size], old_size)
        assert proof == _b64_list(data["proof"])


# --- known answers -----------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    sha256_of_nothing = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert EMPTY_ROOT.hex() == sha256_of_nothing
    assert root([]) == EMPTY_ROOT == REFERENCE_ROOTS[0]


def test_leaf_hashes_match_reference() -> None:
    assert [leaf_hash(d) for d in REFERENCE_LEAF_INPUTS] == REFERENCE_LEAF_HASHES


@pytest.mark.parametrize("size", range(9))
def test_root_matches_reference(size: int) -> None:
    assert root(REFERENCE_LEAF_HASHES[:size]) == REFERENCE_ROOTS[size]


def test_root_of_a_million_leaves_without_recursion() -> None:
    # Independent expectation: 1,000,000 identical leaves form perfect subtrees of the
    # sizes of its set bits, each a self-hash chain, folded right to left.
    size = 1_000_000
    base = leaf_hash(b"x")
    perfect = [base]
    for _ in range(size.bit_length()):
        perfect.append(node_hash(perfect[-1], perfect[-1]))
    parts = [perfect[h] for h in reversed(range(size.bit_length())) if size >> h & 1]
    expected = parts.pop()
    while parts:
        expected = node_hash(parts.pop(), expected)
    assert root([base] * size) == expected


def test_builders_hash_each_node_at_most_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = merkle.node_hash

    def counting(left: bytes, right: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return real(left, right)

    monkeypatch.setattr(merkle, "node_hash", counting)
    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(1000)]
    root(leaves)
    assert calls == 999
    # A proof's hashes cover disjoint subtrees, so together they cost fewer than n.
    calls = 0
    inclusion_proof(leaves, 617)
    assert calls < 1000
    calls = 0
    consistency_proof(leaves, 617)
    assert calls < 1000


def test_tree_size_is_authenticated_by_the_checkpoint_not_the_proof() -> None:
    # RFC 9162 behaviour, kept on purpose (the Go reference does the same): the proof
    # for leaf 0 of 5 also checks out as "leaf 0 of 6" against the *size-5* root,
    # because both sizes give the same path shape. Callers must take root and size
    # together from one signed checkpoint; the module docstring says so.
    proof = inclusion_proof(REFERENCE_LEAF_HASHES[:5], 0)
    verify_inclusion(
        leaf_hash=REFERENCE_LEAF_HASHES[0],
        index=0,
        tree_size=6,
        proof=proof,
        root=REFERENCE_ROOTS[5],
    )
    with pytest.raises(MerkleProofError):
        verify_inclusion(
            leaf_hash=REFERENCE_LEAF_HASHES[0],
            index=0,
            tree_size=6,
            proof=proof,
            root=REFERENCE_ROOTS[6],
        )


# --- table-driven edge cases -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class InclusionCase:
    reason: str
    index: int
    tree_size: int
    leaf: bytes = REFERENCE_LEAF_HASHES[0]
    proof: Sequence[bytes] = ()
    root: bytes = REFERENCE_ROOTS[1]


_OK_PROOF_0_OF_8 = inclusion_proof(REFERENCE_LEAF_HASHES, 0)

INCLUSION_REJECTED = [
    InclusionCase(reason="negative index", index=-1, tree_size=1),
    InclusionCase(reason="empty tree has no leaves", index=0, tree_size=0, root=EMPTY_ROOT),
    InclusionCase(
        # Leaf 1 of the 2-leaf tree, relabelled as index 1 of a 1-leaf tree: the hashes
        # work out, only the range check refuses it.
        reason="index equal to the tree size",
        index=1,
        tree_size=1,
        leaf=REFERENCE_LEAF_HASHES[1],
        proof=[REFERENCE_LEAF_HASHES[0]],
        root=REFERENCE_ROOTS[2],
    ),
    InclusionCase(reason="short leaf hash", index=0, tree_size=1, leaf=b"\x00" * 31),
    InclusionCase(reason="long root", index=0, tree_size=1, root=REFERENCE_ROOTS[1] + b"\x00"),
    InclusionCase(
        reason="a 33-byte proof hash, even at the right count",
        index=0,
        tree_size=8,
        proof=[*_OK_PROOF_0_OF_8[:2], _OK_PROOF_0_OF_8[2] + b"\x00"],
        root=REFERENCE_ROOTS[8],
    ),
]


@pytest.mark.parametrize("case", INCLUSION_REJECTED, ids=lambda c: c.reason)
def test_inclusion_rejected(case: InclusionCase) -> None:
    with pytest.raises(MerkleProofError):
        verify_inclusion(
            leaf_hash=case.leaf,
            index=case.index,
            tree_size=case.tree_size,
            proof=case.proof,
            root=case.root,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencyCase:
    reason: str
    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    proof: Sequence[bytes] = ()


CONSISTENCY_REJECTED = [
    ConsistencyCase(
        reason="0 to 0 proves nothing",
        old_size=0,
        new_size=0,
        old_root=EMPTY_ROOT,
        new_root=EMPTY_ROOT,
    ),
    ConsistencyCase(
        reason="0 to n proves nothing, even with an empty proof",
        old_size=0,
        new_size=3,
        old_root=EMPTY_ROOT,
        new_root=REFERENCE_ROOTS[3],
    ),
    ConsistencyCase(
        reason="shrinking tree",
        old_size=4,
        new_size=3,
        old_root=REFERENCE_ROOTS[4],
        new_root=REFERENCE_ROOTS[3],
    ),
    ConsistencyCase(
        reason="same size, different roots (a fork)",
        old_size=3,
        new_size=3,
        old_root=REFERENCE_ROOTS[3],
        new_root=REFERENCE_ROOTS[4],
    ),
    ConsistencyCase(
        reason="same size, non-empty proof",
        old_size=3,
        new_size=3,
        old_root=REFERENCE_ROOTS[3],
        new_root=REFERENCE_ROOTS[3],
        proof=[REFERENCE_ROOTS[3]],
    ),
    ConsistencyCase(
        reason="same size, roots of the wrong length",
        old_size=1,
        new_size=1,
        old_root=b"don't care",
        new_root=b"don't care",
    ),
    ConsistencyCase(
        # With an old size that is not a power of two, old_root enters only the final
        # comparison; the proof itself is genuine.
        reason="well-formed but wrong old root",
        old_size=3,
        new_size=8,
        old_root=REFERENCE_ROOTS[4],
        new_root=REFERENCE_ROOTS[8],
        proof=consistency_proof(REFERENCE_LEAF_HASHES, 3),
    ),
    ConsistencyCase(
        reason="negative size",
        old_size=-1,
        new_size=1,
        old_root=EMPTY_ROOT,
        new_root=REFERENCE_ROOTS[1],
    ),
]


@pytest.mark.parametrize("case", CONSISTENCY_REJECTED, ids=lambda c: c.reason)
def test_consistency_rejected(case: ConsistencyCase) -> None:
    with pytest.raises(MerkleProofError):
        verify_consistency(
            old_size=case.old_size,
            new_size=case.new_size,
            old_root=case.old_root,
            new_root=case.new_root,
            proof=case.proof,
        )


def test_tree_sizes_stop_at_uint64() -> None:
    # Proofs whose hashes work out at both sizes; only the RFC's uint64 bound on tree
    # sizes tells them apart. Leaf 0 of 2**64 - 1 or 2**64 leaves has 64 right siblings.
    leaf, sibling = REFERENCE_LEAF_HASHES[0], REFERENCE_LEAF_HASHES[1]
    tall_root = leaf
    for _ in range(64):
        tall_root = node_hash(tall_root, sibling)
    verify_inclusion(
        leaf_hash=leaf, index=0, tree_size=2**64 - 1, proof=[sibling] * 64, root=tall_root
    )
    with pytest.raises(MerkleProofError):
        verify_inclusion(
            leaf_hash=leaf, index=0, tree_size=2**64, proof=[sibling] * 64, root=tall_root
        )

    # From 2**63 leaves, one right-hand node reaches any size up to 2**64 - 1.
    grown_root = node_hash(REFERENCE_ROOTS[8], sibling)
    verify_consistency(
        old_size=2**63,
        new_size=2**64 - 1,
        old_root=REFERENCE_ROOTS[8],
        new_root=grown_root,
        proof=[sibling],
    )
    with pytest.raises(MerkleProofError):
        verify_consistency(
            old_size=2**63,
            new_size=2**64,
            old_root=REFERENCE_ROOTS[8],
            new_root=grown_root,
            proof=[sibling],
        )


def test_same_size_same_root_is_consistent() -> None:
    verify_consistency(
        old_size=5,
        new_size=5,
        old_root=REFERENCE_ROOTS[5],
        new_root=REFERENCE_ROOTS[5],
        proof=[],
    )


def test_merkle_proof_error_is_a_lineage_error_with_a_hint() -> None:
    with pytest.raises(LineageError) as caught:
        verify_consistency(
            old_size=3,
            new_size=3,
            old_root=REFERENCE_ROOTS[3],
            new_root=REFERENCE_ROOTS[4],
            proof=[],
        )
    assert isinstance(caught.value, MerkleProofError)
    assert caught.value.hint


@pytest.mark.parametrize(
    ("reason", "build"),
    [
        ("index past the end", lambda: inclusion_proof(REFERENCE_LEAF_HASHES, 8)),
        ("negative index", lambda: inclusion_proof(REFERENCE_LEAF_HASHES, -1)),
        ("no leaves", lambda: inclusion_proof([], 0)),
        ("old size zero", lambda: consistency_proof(REFERENCE_LEAF_HASHES, 0)),
        ("old size past the end", lambda: consistency_proof(REFERENCE_LEAF_HASHES, 9)),
        ("leaf data, not hashes", lambda: root(REFERENCE_LEAF_INPUTS)),
    ],
)
def test_builders_refuse_misuse(reason: str, build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - misuse is a plain ValueError by design
        build()


def test_consistency_proof_of_equal_sizes_is_empty() -> None:
    assert consistency_proof(REFERENCE_LEAF_HASHES, 8) == []


# --- properties --------------------------------------------------------------------------


@st.composite
def trees(draw: st.DrawFn, *, max_size: int = 300) -> tuple[list[bytes], int]:
    """Distinct leaf hashes for a tree of ``size`` leaves, plus one spare leaf.

    Leaves are distinct on purpose: with repeated leaves, two positions can have the
    same proof, and "another index is rejected" would not hold.
    """
    size = draw(st.integers(min_value=1, max_value=max_size))
    salt = draw(st.binary(max_size=8))
    leaves = [leaf_hash(salt + i.to_bytes(4, "big")) for i in range(size + 1)]
    return leaves, size


def _flip_bit(value: bytes, data: st.DataObject) -> bytes:
    bit = data.draw(st.integers(0, len(value) * 8 - 1), label="bit")
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def _flip(proof: list[bytes], data: st.DataObject) -> list[bytes]:
    position = data.draw(st.integers(0, len(proof) - 1), label="proof position")
    return [*proof[:position], _flip_bit(proof[position], data), *proof[position + 1 :]]


def _inclusion_rejected(
    *, leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root_hash: bytes
) -> bool:
    try:
        verify_inclusion(
            leaf_hash=leaf, index=index, tree_size=tree_size, proof=proof, root=root_hash
        )
    except MerkleProofError:
        return True
    return False


def _consistency_rejected(
    *, old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    try:
        verify_consistency(
            old_size=old_size, new_size=new_size, old_root=old_root, new_root=new_root, proof=proof
        )
    except MerkleProofError:
        return True
    return False


@given(tree=trees(), data=st.data())
def test_inclusion_proofs_verify_and_tampering_never_does(
    tree: tuple[list[bytes], int], data: st.DataObject
) -> None:
    leaves, size = tree
    index = data.draw(st.integers(0, size - 1), label="index")
    tree_root = root(leaves[:size])
    proof = inclusion_proof(leaves[:size], index)
    leaf = leaves[index]

    verify_inclusion(leaf_hash=leaf, index=index, tree_size=size, proof=proof, root=tree_root)

    if proof:
        assert _inclusion_rejected(
            leaf=leaf, index=index, tree_size=size, proof=_flip(proof, data), root_hash=tree_root
        )
    assert _inclusion_rejected(
        leaf=_flip_bit(leaf, data), index=index, tree_size=size, proof=proof, root_hash=tree_root
    )
    assert _inclusion_rejected(
        leaf=leaf, index=index, tree_size=size, proof=proof, root_hash=_flip_bit(tree_root, data)
    )
    for other in (index - 1, index + 1):
        assert _inclusion_rejected(
            leaf=leaf, index=other, tree_size=size, proof=proof, root_hash=tree_root
        )
    # Another size, checked against that size's real root (the tree one leaf longer or
    # shorter). Against the *same* root another size can pass: see
    # test_tree_size_is_authenticated_by_the_checkpoint_not_the_proof.
    for other in (size - 1, size + 1):
        assert _inclusion_rejected(
            leaf=leaf, index=index, tree_size=other, proof=proof, root_hash=root(leaves[:other])
        )


@given(tree=trees(), data=st.data())
def test_consistency_proofs_verify_and_tampering_never_does(
    tree: tuple[list[bytes], int], data: st.DataObject
) -> None:
    leaves, new_size = tree
    old_size = data.draw(st.integers(1, new_size), label="old size")
    old_root = root(leaves[:old_size])
    new_root = root(leaves[:new_size])
    proof = consistency_proof(leaves[:new_size], old_size)

    verify_consistency(
        old_size=old_size, new_size=new_size, old_root=old_root, new_root=new_root, proof=proof
    )

    if proof:
        assert _consistency_rejected(
            old_size=old_size,
            new_size=new_size,
            old_root=old_root,
            new_root=new_root,
            proof=_flip(proof, data),
        )
    # Whatever the sizes, a changed root on either side is refused. When the old size is
    # not a power of two, old_root enters only the final comparison, so this is the
    # check that ties the proof to the old tree at all.
    assert _consistency_rejected(
        old_size=old_size,
        new_size=new_size,
        old_root=_flip_bit(old_root, data),
        new_root=new_root,
        proof=proof,
    )
    assert _consistency_rejected(
        old_size=old_size,
        new_size=new_size,
        old_root=old_root,
        new_root=_flip_bit(new_root, data),
        proof=proof,
    )
    if old_size == new_size:
        return
    for other in (old_size - 1, old_size + 1):
        # Neither with the old root we hold nor with the real root of that other size.
        for other_root in (old_root, root(leaves[:other])):
            assert _consistency_rejected(
                old_size=other,
                new_size=new_size,
                old_root=other_root,
                new_root=new_root,
                proof=proof,
            )
    for other in (new_size - 1, new_size + 1):
        assert _consistency_rejected(
            old_size=old_size,
            new_size=other,
            old_root=old_root,
            new_root=root(leaves[:other]),
            proof=proof,
        )


@given(tree=trees(max_size=64))
def test_every_proof_of_a_tree_verifies(tree: tuple[list[bytes], int]) -> None:
    leaves, size = tree
    leaves = leaves[:size]
    tree_root = root(leaves)
    for index in range(size):
        verify_inclusion(
            leaf_hash=leaves[index],
            index=index,
            tree_size=size,
            proof=inclusion_proof(leaves, index),
            root=tree_root,
        )
    for old_size in range(1, size + 1):
        verify_consistency(
            old_size=old_size,
            new_size=size,
            old_root=root(leaves[:old_size]),
            new_root=tree_root,
            proof=consistency_proof(leaves, old_size),
        )


def test_missing_vectors_skip_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the Merkle vectors a test skips with a reason that names the variable to
    set; with GATEWAY_REQUIRE_VECTORS=1 (``.ci/run``) it fails instead."""
    from tests.conftest import REQUIRE_VECTORS_VARIABLE, VECTORS_VARIABLE

    monkeypatch.delenv(REQUIRE_VECTORS_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match=VECTORS_VARIABLE):
        vectors_missing("RFC 9162 Merkle test vectors")
    monkeypatch.setenv(REQUIRE_VECTORS_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match=VECTORS_VARIABLE):
        vectors_missing("RFC 9162 Merkle test vectors")


@pytest.mark.parametrize("already", [0, 1, 5, 8])
@pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 8, 9, 64, 100])
def test_append_leaves_matches_append_and_root_at_every_stop(already: int, count: int) -> None:
    """The batch path (level by level from empty, leaf by leaf after a prefix) gives the
    same range and the same tree heads as appending one leaf at a time."""
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(already + count)]
    batch = merkle.CompactRange()
    for leaf in leaves[:already]:
        batch.append(leaf)
    stops = set(range(already + 1, already + count + 1, 3)) | {already + count}
    heads = batch.append_leaves(leaves[already:], stops)
    one_by_one = merkle.CompactRange()
    for size, leaf in enumerate(leaves, start=1):
        one_by_one.append(leaf)
        if size in stops and size > already:
            assert heads[size] == one_by_one.root() == merkle.root(leaves[:size])
    assert set(heads) == {s for s in stops if s > already}
    assert (batch.end, batch.hashes) == (one_by_one.end, one_by_one.hashes)
    assert batch.root() == merkle.root(leaves)


def test_append_leaves_refuses_leaf_data_for_leaf_hashes() -> None:
    with pytest.raises(ValueError, match="not 32"):
        merkle.CompactRange().append_leaves([b"entry bytes, not a hash"])
