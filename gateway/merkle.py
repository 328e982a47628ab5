"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing, proofs and their checks.

Pure functions over byte strings: nothing here reads, writes or talks to anything.

Invariants this module keeps:

* Leaves and interior nodes are hashed in separate domains, ``SHA-256(0x00 || leaf)``
  and ``SHA-256(0x01 || left || right)``, so an interior node can never be passed off
  as a leaf (the second-preimage attack RFC 9162 §2.1.1 prevents).
* Every hash this module accepts or returns is exactly 32 bytes (SHA-256). The
  verifiers check the length of the leaf hash, the roots and every proof hash before
  using them; the builders refuse leaf hashes of any other length, which catches the
  easy mistake of passing leaf *data* where leaf *hashes* are expected.
* ``verify_inclusion`` and ``verify_consistency`` return ``None`` or raise
  :class:`~gateway.errors.MerkleProofError` naming the check that failed; they never
  return a flag. Their edge cases match the transparency-dev/merkle Go reference
  (``proof/verify.go``), so the public test vectors from that project apply unchanged.
  The one deliberate difference: Go compares roots of equal-size trees as opaque
  bytes, this module first requires them to be 32 bytes long.
* A consistency proof from an empty tree is refused (``old_size == 0``). It proves
  nothing: every tree extends the empty tree. A caller without an earlier checkpoint
  has nothing to check and must not call ``verify_consistency``.
* The hash computation authenticates a root, not a tree size: a proof for
  ``(index, n)`` can also check out for ``(index, n + 1)`` against the *same* root when
  both sizes give the same path shape (RFC 9162 and the Go reference behave alike).
  Callers must take the root and the size together from one signed checkpoint.
* A :class:`CompactRange` holds the roots of the maximal aligned perfect subtrees that
  cover leaves ``[begin, end)`` (at most two per level): from ``[0, n)`` alone the root
  of the first ``n`` leaves, and the root of any longer tree once the later leaves are
  appended, can be computed without the first ``n`` leaves. That is what lets a lineage
  drop a prefix (compaction) and still be checked against checkpoints over the whole.
  Appending is amortised O(1) node hashes per leaf; merging two adjacent ranges costs
  O(log n). A range built from untrusted hashes is checked for its shape (the number of
  hashes ``[begin, end)`` has), never for its content: only a root compared with a
  signed one authenticates it.
* Tree sizes are 0 to 2**64 - 1, the RFC's ``uint64``; anything else is refused.
* The builders (``root``, ``inclusion_proof``, ``consistency_proof``) work on our own
  data, so bad arguments there are programming errors and raise :class:`ValueError`.
  Each call computes every node hash at most once (fewer than n), uses loops rather
  than recursion, and keeps O(log n) intermediate hashes besides its result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import Final

from gateway.errors import MerkleProofError

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

_HASH_SIZE: Final = 32
_MAX_TREE_SIZE: Final = 2**64 - 1
_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"

EMPTY_ROOT: Final[bytes] = hashlib.sha256(b"").digest()
"""MTH({}) of RFC 9162 §2.1.1: the hash of the empty string."""


def leaf_hash(data: bytes) -> bytes:
    """The hash of one leaf: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


# --- building --------------------------------------------------------------------------


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves (RFC 9162 §2.1.1); ``EMPTY_ROOT`` for no leaves."""
    _require_leaf_hashes(leaf_hashes)
    if not leaf_hashes:
        return EMPTY_ROOT
    return _subtree_root(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 §2.1.3.1: sibling hashes from the leaf up to the root.

    Raises :class:`ValueError` unless ``0 <= index < len(leaf_hashes)``.
    """
    _require_leaf_hashes(leaf_hashes)
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of {size} leaves")
    # The RFC defines PATH recursively, appending the sibling *after* the sub-path. This
    # loop walks from the root down, so it collects siblings top-first and reverses.
    siblings: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        split = lo + _largest_power_of_two_below(hi - lo)
        if index < split:
            siblings.append(_subtree_root(leaf_hashes, split, hi))
            hi = split
        else:
            siblings.append(_subtree_root(leaf_hashes, lo, split))
            lo = split
    siblings.reverse()
    return siblings


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) of RFC 9162 §2.1.4.1 (SUBPROOF with ``b = true``).

    Empty when ``old_size == len(leaf_hashes)``. Raises :class:`ValueError` unless
    ``0 < old_size <= len(leaf_hashes)``: there is no proof from an empty tree.
    """
    _require_leaf_hashes(leaf_hashes)
    size = len(leaf_hashes)
    if not 0 < old_size <= size:
        raise ValueError(
            f"old size {old_size} must be between 1 and the tree size {size}; "
            "a consistency proof from an empty tree proves nothing"
        )
    # SUBPROOF(m, D[lo:hi], b) as a loop, top-down, reversed at the end (see above).
    # Invariant: lo < old_size <= hi. ``old_root_known`` is SUBPROOF's ``b``: it stays
    # true while the old tree's root is still an ancestor-or-self of the current node,
    # and then the verifier already has that hash and it is left out.
    nodes: list[bytes] = []
    lo, hi = 0, size
    old_root_known = True
    while old_size != hi:
        split = lo + _largest_power_of_two_below(hi - lo)
        if old_size <= split:
            nodes.append(_subtree_root(leaf_hashes, split, hi))
            hi = split
        else:
            nodes.append(_subtree_root(leaf_hashes, lo, split))
            lo = split
            old_root_known = False
    if not old_root_known:
        nodes.append(_subtree_root(leaf_hashes, lo, hi))
    nodes.reverse()
    return nodes


def _subtree_root(leaf_hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) for ``lo < hi``, with hi - lo - 1 node hashes and no recursion.

    Leaves are pushed onto a stack of perfect-subtree roots, merged whenever two of the
    same height meet (as many merges as the position has trailing one bits). At the end
    the stack holds the perfect subtrees of decreasing size that make up the range, and
    folding them right to left gives the RFC's tree, whose left subtree is always the
    largest power of two.
    """
    stack: list[bytes] = []
    for position in range(hi - lo):
        node = leaf_hashes[lo + position]
        while position & 1:
            node = node_hash(stack.pop(), node)
            position >>= 1
        stack.append(node)
    node = stack.pop()
    while stack:
        node = node_hash(stack.pop(), node)
    return node


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162 §2.1.1: the largest power of two strictly less than ``n >= 2``."""
    return 1 << ((n - 1).bit_length() - 1)


def _require_leaf_hashes(leaf_hashes: Sequence[bytes]) -> None:
    for position, value in enumerate(leaf_hashes):
        if len(value) != _HASH_SIZE:
            raise ValueError(
                f"leaf_hashes[{position}] is {len(value)} bytes, not a {_HASH_SIZE}-byte "
                "hash; pass leaf_hash(data) for each entry, not the data itself"
            )


# --- verifying -------------------------------------------------------------------------


def verify_inclusion(
    *,
    leaf_hash: bytes,
    index: int,
    tree_size: int,
    proof: Sequence[bytes],
    root: bytes,
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    RFC 9162 §2.1.3.2. Raises :class:`~gateway.errors.MerkleProofError` on any failure.
    """
    _require_size("tree_size", tree_size)
    if not 0 <= index < tree_size:
        raise MerkleProofError(
            f"leaf index {index} is outside a tree of {tree_size} leaves",
            hint="the index and tree size must come from the same log entry and checkpoint",
        )
    _require_hash("leaf hash", leaf_hash)
    _require_hash("root", root)
    _require_proof_hashes(proof)

    # Checking the length first gives a precise error, and it is what the RFC's checks
    # on ``sn`` (step 4a: more hashes than levels; step 5: fewer) amount to: the loop
    # below consumes exactly this many hashes on the way from the leaf to the root.
    # That also makes the RFC's extra right shifts in step 4b.ii unnecessary: once
    # ``fn == sn`` the node is on the right border, the two stay equal, and every
    # remaining hash is a left sibling.
    inner = (index ^ (tree_size - 1)).bit_length()
    expected = inner + (index >> inner).bit_count()
    if len(proof) != expected:
        raise MerkleProofError(
            f"inclusion proof has {len(proof)} hashes; leaf {index} of a tree of "
            f"{tree_size} needs exactly {expected}",
            hint="fetch the proof again for exactly this index and tree size",
        )

    fn, sn = index, tree_size - 1
    computed = leaf_hash
    for sibling in proof:
        if fn & 1 or fn == sn:
            computed = node_hash(sibling, computed)
        else:
            computed = node_hash(computed, sibling)
        fn >>= 1
        sn >>= 1

    if computed != root:
        raise MerkleProofError(
            f"inclusion proof for leaf {index} of a tree of {tree_size} leads to root "
            f"{computed.hex()}, not the expected {root.hex()}",
            hint="the entry is not in this tree, or the proof or leaf hash belongs to "
            "another tree; fetch a fresh proof against this checkpoint",
        )


def verify_consistency(
    *,
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Check that the tree ``(new_size, new_root)`` extends ``(old_size, old_root)``.

    RFC 9162 §2.1.4.2, with the transparency-dev/merkle edge cases: equal sizes need
    an empty proof and equal roots; ``old_size == 0`` is refused (see the module
    docstring). Raises :class:`~gateway.errors.MerkleProofError` on any failure.
    """
    _require_size("old_size", old_size)
    _require_size("new_size", new_size)
    if old_size > new_size:
        raise MerkleProofError(
            f"old tree size {old_size} is larger than new tree size {new_size}",
            hint="a log only grows; a smaller newer checkpoint is a rollback — "
            "keep the larger checkpoint and report the log",
        )
    if old_size == 0:
        raise MerkleProofError(
            "a consistency proof from an empty tree (old_size 0) proves nothing",
            hint="with no earlier checkpoint there is nothing to check; "
            "do not call verify_consistency until one has been accepted",
        )
    _require_hash("old root", old_root)
    _require_hash("new root", new_root)
    _require_proof_hashes(proof)

    if old_size == new_size:
        if proof:
            raise MerkleProofError(
                f"both trees have {old_size} leaves, so the proof must be empty, "
                f"but it has {len(proof)} hashes",
                hint="pass an empty proof when the sizes are equal",
            )
        if old_root != new_root:
            # Two different roots for one size cannot both be honest: the log has forked.
            raise MerkleProofError(
                f"two different roots for the same tree size {old_size}: "
                f"{old_root.hex()} and {new_root.hex()}",
                hint="the log shows different histories to different readers; keep both "
                "signed checkpoints as evidence and stop trusting this log",
            )
        return

    # Same reasoning as in verify_inclusion: the exact length is what the RFC's checks
    # on ``sn`` enforce, said up front, and it makes step 6b.iii's shifts unnecessary.
    # The proof is the tail of the inclusion path of leaf old_size - 1 in the new tree,
    # starting at the root of the largest perfect subtree that ends at old_size. When
    # that subtree is the whole old tree (old_size a power of two) its root is old_root,
    # which the verifier already has, so the proof leaves it out.
    old_is_perfect = old_size & (old_size - 1) == 0
    fork_level = ((old_size - 1) ^ (new_size - 1)).bit_length()
    border = ((old_size - 1) >> fork_level).bit_count()
    perfect_height = (old_size & -old_size).bit_length() - 1
    expected = (0 if old_is_perfect else 1) + (fork_level - perfect_height) + border
    if len(proof) != expected:
        raise MerkleProofError(
            f"consistency proof has {len(proof)} hashes; from {old_size} to "
            f"{new_size} leaves it needs exactly {expected}",
            hint="fetch the proof again for exactly these two tree sizes",
        )

    path = [old_root, *proof] if old_is_perfect else list(proof)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    old_computed = new_computed = path[0]
    for node in path[1:]:
        if fn & 1 or fn == sn:
            old_computed = node_hash(node, old_computed)
            new_computed = node_hash(node, new_computed)
        else:
            # Nodes right of the old tree's edge exist only in the new tree.
            new_computed = node_hash(new_computed, node)
        fn >>= 1
        sn >>= 1

    # The old root is checked first: if the proof does not rebuild it, the proof says
    # nothing about this old tree, whatever it leads to in the new one.
    if old_computed != old_root:
        raise MerkleProofError(
            f"consistency proof rebuilds old root {old_computed.hex()} for size "
            f"{old_size}, not the expected {old_root.hex()}",
            hint="the proof was made for another old size or another log, or the old "
            "checkpoint is not from this log",
        )
    if new_computed != new_root:
        raise MerkleProofError(
            f"consistency proof from size {old_size} leads to new root "
            f"{new_computed.hex()} for size {new_size}, not the expected {new_root.hex()}",
            hint="the new checkpoint does not extend the old one: either the proof is for "
            "other sizes or the log rewrote history; keep both checkpoints as evidence",
        )


def _require_size(name: str, size: int) -> None:
    if not 0 <= size <= _MAX_TREE_SIZE:
        raise MerkleProofError(
            f"{name} {size} is not a tree size (0 to 2**64 - 1)",
            hint="take tree sizes from a signed checkpoint, unchanged",
        )


def _require_hash(name: str, value: bytes) -> None:
    if len(value) != _HASH_SIZE:
        raise MerkleProofError(
            f"{name} is {len(value)} bytes, not a {_HASH_SIZE}-byte SHA-256 hash",
            hint="check that the value was decoded (base64/hex) and not truncated",
        )


def _require_proof_hashes(proof: Sequence[bytes]) -> None:
    for position, value in enumerate(proof):
        _require_hash(f"proof[{position}]", value)


# --- compact ranges ----------------------------------------------------------------------


def _decomposition(begin: int, end: int) -> list[int]:
    """Heights of the maximal aligned perfect subtrees covering ``[begin, end)``, in order."""
    heights: list[int] = []
    tail: list[int] = []
    lo, hi = begin, end
    while lo < hi:
        # Largest aligned block that starts at lo and fits; blocks at the right end grow
        # from hi downwards, so take whichever side the binary structure dictates.
        low_bit = (lo & -lo).bit_length() - 1 if lo else 64
        fit = (hi - lo).bit_length() - 1
        if low_bit <= fit:
            heights.append(low_bit)
            lo += 1 << low_bit
        else:
            high = (hi & -hi).bit_length() - 1 if hi else 64
            height = min(high, fit)
            tail.append(height)
            hi -= 1 << height
    return heights + tail[::-1]


class CompactRange:
    """The subtree roots covering leaves ``[begin, end)`` of an RFC 9162 tree (see the
    module docstring). Mutable while it is being built; :meth:`copy` before sharing."""

    __slots__ = ("_nodes", "begin", "end")

    def __init__(
        self, begin: int = 0, end: int | None = None, hashes: Sequence[bytes] = ()
    ) -> None:
        end = begin if end is None else end
        if not 0 <= begin <= end <= _MAX_TREE_SIZE:
            raise MerkleProofError(f"[{begin}, {end}) is not a range of leaves")
        heights = _decomposition(begin, end)
        if len(hashes) != len(heights):
            raise MerkleProofError(
                f"a compact range of leaves [{begin}, {end}) has {len(heights)} hashes, "
                f"not {len(hashes)}",
                hint="the range was cut or padded; refuse it",
            )
        _require_proof_hashes(hashes)
        self.begin = begin
        self.end = end
        self._nodes: list[tuple[int, bytes]] = list(zip(heights, hashes, strict=True))

    def copy(self) -> CompactRange:
        other = CompactRange.__new__(CompactRange)
        other.begin, other.end, other._nodes = self.begin, self.end, list(self._nodes)
        return other

    @property
    def hashes(self) -> list[bytes]:
        return [node for _height, node in self._nodes]

    def append(self, leaf: bytes) -> None:
        """Add the leaf hash of leaf ``end``."""
        self._push(0, leaf)
        self.end += 1

    def append_leaves(
        self, leaves: Sequence[bytes], stops: Collection[int] = ()
    ) -> dict[int, bytes]:
        """Add ``leaves`` (leaf hashes, in order) as :meth:`append` would, and return the
        tree head at every size in ``stops`` that the range passes through.

        The same node hashes as :meth:`append` then :meth:`root` at each stop (a test
        holds them together), with less interpreter work per leaf: verifying a lineage
        appends every leaf, and the per-call overhead of ``append`` was as large as the
        hashing itself. An empty range is built level by level (one list comprehension
        per tree level); a range that already holds leaves (a compacted lineage's base)
        appends leaf by leaf."""
        # Every length checked in C first; the loop only finds the one to name.
        if not all(map(_HASH_SIZE.__eq__, map(len, leaves))):
            for position, node in enumerate(leaves):
                if len(node) != _HASH_SIZE:
                    raise ValueError(f"leaf hash {position} is {len(node)} bytes, not {_HASH_SIZE}")
        if self.end == 0 and self.begin == 0:
            return self._fill(leaves, stops)
        nodes = self._nodes
        end = self.end
        sha256 = hashlib.sha256
        heads: dict[int, bytes] = {}
        for leaf in leaves:
            node = leaf
            height = 0
            position = end
            # Merge while the new node is the right half of an aligned parent: the same
            # condition as _push, for a leaf (position == end).
            while nodes and nodes[-1][0] == height and position & 1:
                node = sha256(_NODE_PREFIX + nodes.pop()[1] + node).digest()
                height += 1
                position >>= 1
            nodes.append((height, node))
            end += 1
            if end in stops:
                self.end = end
                heads[end] = self.root()
        self.end = end
        return heads

    def _fill(self, leaves: Sequence[bytes], stops: Collection[int]) -> dict[int, bytes]:
        # levels[h][j] is the root of the perfect subtree over leaves [j * 2**h,
        # (j + 1) * 2**h); the compact range [0, n) is, for each bit h set in n from the
        # highest, levels[h][(n >> h) - 1].
        sha256 = hashlib.sha256
        levels = [list(leaves)]
        level = levels[0]
        while len(level) > 1:
            # Pairs by zip over one iterator (an odd last node is left out, as it has no
            # sibling yet): no index arithmetic or subscripts per node, which were a
            # tenth of each node's cost beside the hash itself.
            pairs = iter(level)
            level = [
                sha256(_NODE_PREFIX + left + right).digest()
                for left, right in zip(pairs, pairs, strict=False)
            ]
            levels.append(level)

        def covering(n: int) -> list[tuple[int, bytes]]:
            return [
                (h, levels[h][(n >> h) - 1]) for h in reversed(range(n.bit_length())) if n >> h & 1
            ]

        heads: dict[int, bytes] = {}
        total = len(leaves)
        for stop in stops:
            if 0 < stop <= total:
                self._nodes, self.end = covering(stop), stop
                heads[stop] = self.root()
        self._nodes, self.end = covering(total), total
        return heads

    def extend(self, other: CompactRange) -> None:
        """Add ``other``, which must start where this range ends."""
        if other.begin != self.end:
            raise MerkleProofError(
                f"range [{other.begin}, {other.end}) does not start where [{self.begin}, "
                f"{self.end}) ends"
            )
        for height, node in other._nodes:
            self._push(height, node)
        self.end = other.end

    def _push(self, height: int, node: bytes) -> None:
        nodes = self._nodes
        # The new node covers [position, position + 2**height); it merges with the node
        # before it whenever the two are the halves of one aligned parent.
        position = self.end if height == 0 else self._end_of_nodes()
        while nodes and nodes[-1][0] == height and (position >> height) & 1:
            node = node_hash(nodes.pop()[1], node)
            height += 1
            position -= 1 << (height - 1)
        nodes.append((height, node))

    def _end_of_nodes(self) -> int:
        return self.begin + sum(1 << h for h, _ in self._nodes)

    def root(self) -> bytes:
        """The tree head of leaves ``[0, end)``; only a range that starts at 0 has one."""
        if self.begin != 0:
            raise ValueError("only a range starting at leaf 0 has a tree root")
        if not self._nodes:
            return EMPTY_ROOT
        sha256 = hashlib.sha256
        node = self._nodes[-1][1]
        for _height, left in reversed(self._nodes[:-1]):
            node = sha256(_NODE_PREFIX + left + node).digest()  # node_hash(left, node)
        return node
