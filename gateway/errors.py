"""Every error the gateway raises, under one root.

Each error carries a *reason* (what was wrong) and, where there is one, a *hint*
(what a person should do about it). ``str(error)`` gives both on one line, which is
what the CLI prints and what crosses the wire in gRPC status details.

Rules kept here:

* Every leaf names one failure; callers and tests match on the leaf type, never
  on message text.
* Errors raised while handling another exception are chained (``raise ... from``).
* The mapping from these types to gRPC status codes lives in exactly one place,
  :mod:`gateway.transport.status`.
"""

from __future__ import annotations

import os


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    def __init__(self, reason: str, *, hint: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.reason} — {self.hint}" if self.hint else self.reason

    def diagnostics(self) -> str:
        """A short text for people: the reason, then what to do about it."""
        lines = [f"{type(self).__name__}: {self.reason}"]
        if self.hint:
            lines.append(f"  what to do: {self.hint}")
        return "\n".join(lines)


# --- configuration -----------------------------------------------------------------


class ConfigError(GatewayError):
    """A configuration file, key file or command-line argument is unusable."""


def unreadable(name: str | os.PathLike[str], exc: OSError) -> ConfigError:
    """The error for a file named by the operator that cannot be opened, saying what to
    do about the usual causes (a mistyped path, a directory, permissions)."""
    if isinstance(exc, FileNotFoundError):
        hint = "check the path (a relative one is read from the current directory)"
    elif isinstance(exc, IsADirectoryError):
        hint = "name a file, not a directory"
    elif isinstance(exc, PermissionError):
        hint = "make it readable by this user, or run as one who can read it"
    else:
        hint = "check that the path names a readable file"
    return ConfigError(f"{os.fspath(name)}: cannot read: {exc.strerror or exc}", hint=hint)


# --- envelopes ---------------------------------------------------------------------


class EnvelopeError(GatewayError):
    """An envelope is malformed: it cannot be decoded or breaks the format's rules."""


class EnvelopeTooLargeError(EnvelopeError):
    """An envelope or one of its parts is larger than the receiver accepts."""


class LimitExceededError(EnvelopeError):
    """A counter, time or interval is beyond a limit of :mod:`gateway.limits` (one that
    could not advance, or whose arithmetic would overflow); refused before any work."""


class PayloadTypeError(EnvelopeError):
    """A correctly signed envelope carries a different kind of message than expected."""


class VersionError(PayloadTypeError):
    """A peer or a file speaks a protocol or format version this gateway does not (the
    message names both sides' versions)."""


class PayloadDecodeError(EnvelopeError):
    """The signed payload verified but does not parse as the message it claims to be."""


# --- verification ------------------------------------------------------------------


class VerificationError(GatewayError):
    """Something signed, timed or sequenced failed a check."""


class BadSignatureError(VerificationError):
    """A signature does not verify under the key it names, or too few keys signed."""


class UntrustedKeyError(VerificationError):
    """No trusted key record matches: unknown key, wrong trust domain, host or purpose."""


class RevokedKeyError(UntrustedKeyError):
    """The key was trusted once and has been revoked."""


class ExpiredError(VerificationError):
    """Outside its validity window: expired, not yet valid, or too far in the future."""


class RetiredKeyError(ExpiredError):
    """Signed by a key at or after its retirement (what it signed before still stands)."""


class ReplayError(VerificationError):
    """A message that was already accepted once is presented again."""


class RollbackError(VerificationError):
    """Something older than what was already seen: an epoch, a bundle sequence."""


class AudienceError(VerificationError):
    """The message is addressed to another host."""


class PeerMismatchError(VerificationError):
    """The authenticated peer is not the host the message claims to come from."""


# --- trust -------------------------------------------------------------------------


class TrustError(GatewayError):
    """A trust bundle or key record is malformed or cannot be used."""


# --- authority ---------------------------------------------------------------------


class AuthorityError(GatewayError):
    """The object's credentials do not allow what is being asked."""


class WideningError(AuthorityError):
    """A child grant or host decision would give more than its parent allows."""


class AdmissionDeniedError(AuthorityError):
    """The receiving host's ceiling or the object's constraints refuse this host."""


class ActionUnavailableError(AdmissionDeniedError):
    """The object may take the action, but this host cannot carry it out (an output
    binding on a host without a Dapr sidecar)."""


class CallDeniedError(AdmissionDeniedError):
    """A call to an object was refused: caller not allowed, no such method, or the
    object's answer declined it (its condition was false or its reply failed)."""


class TenantBindingError(AdmissionDeniedError):
    """A peer delivers into a tenant its configuration does not bind it to."""


class QuotaExceededError(AdmissionDeniedError):
    """A tenant already holds as many objects or bytes as its quota allows."""


class AuthorityFormatError(AuthorityError):
    """A capability, constraint, resource pattern or host pattern is malformed."""


class CapabilityWideningError(WideningError):
    """A child's capabilities include a resource or action its parent does not grant."""


class ConstraintWideningError(WideningError):
    """A child's constraints are looser than its parent's, or drop one of them."""


# --- lineage -----------------------------------------------------------------------


class LineageError(GatewayError):
    """The lineage is broken: a link, a checkpoint, or its history does not hold."""


class CustodyError(LineageError):
    """The object's chain of custody has a gap: a handoff whose departure or arrival is
    missing or does not match, or grants that drop a narrowing recorded on the way."""


class ForkError(LineageError):
    """Two diverging copies of one object exist: a stale copy was sent on, or two
    claims were made for one epoch. The later one is refused; the evidence is kept."""


class MerkleProofError(LineageError):
    """An RFC 9162 inclusion or consistency proof does not verify."""


# --- handoff -----------------------------------------------------------------------


class HandoffError(GatewayError):
    """A migration cannot go on as asked."""


class ObjectStateError(HandoffError):
    """The object is not in a state that allows this (e.g. not ACTIVE, already moving)."""


class ObjectMovedError(ObjectStateError):
    """The object was migrated away; ``moved_to`` is the host that holds it now."""

    def __init__(self, reason: str, *, moved_to: str, hint: str | None = None) -> None:
        super().__init__(reason, hint=hint)
        self.moved_to = moved_to


class ObjectBusyError(ObjectStateError):
    """The object stayed frozen by a migration for longer than the caller would wait."""


class UnknownPeerError(HandoffError):
    """The destination or source host is not configured as a peer."""


class PeerUnavailableError(HandoffError):
    """The peer could not be reached in time; the migration did not commit."""


class MigrationNotFoundError(HandoffError):
    """No journal record exists for this migration id."""


class MigrationAbortedError(HandoffError):
    """The migration was aborted; the object stays (or is back) where it was."""


# --- storage -----------------------------------------------------------------------


class StoreError(GatewayError):
    """The state store failed or refused an operation."""


class ConcurrencyError(StoreError):
    """An ETag precondition failed: somebody else wrote first."""


class NotFoundError(StoreError):
    """The key or object does not exist."""


class StoreUnavailableError(StoreError):
    """The store could not be reached or timed out."""


class StoreContentionError(StoreUnavailableError):
    """The store kept losing internal races and gave up; nothing was written. Retry."""


class BusFullError(StoreUnavailableError):
    """The host's message bus took its allowance for now (of a topic, or in all); the
    message was not kept. Retry later: the allowance refills over the bus's retention."""


# --- credentials (grants and chains) --------------------------------------------------


class GrantError(AuthorityError):
    """A grant cannot be read or trusted as a grant at all."""


class GrantFormatError(GrantError):
    """Not a well-formed compact JWS: segments, canonical base64url, JSON, claims."""


class GrantHeaderError(GrantError):
    """The JOSE header is not a grant header: wrong ``typ``, ``crit``, or other fields."""


class GrantAlgorithmError(GrantError):
    """The header's ``alg`` is not the algorithm pinned by the signing key's record."""


class ChainError(AuthorityError):
    """Grants do not link into a chain rooted at the object's own trust domain."""


class RootIssuerError(ChainError):
    """The root grant is not issued by the trust domain that owns the object id."""


class IssuerMismatchError(ChainError):
    """A child's issuer is not its parent's audience (only the audience may extend)."""


class SubjectMismatchError(ChainError):
    """A grant names another object than the chain is for."""


class ParentDigestError(ChainError):
    """A child's ``prf`` is missing or does not match its parent's exact bytes."""


class DepthExceededError(ChainError):
    """The chain is deeper than its root (or a link) allows."""


class LifetimeWideningError(WideningError):
    """A child lives longer (``exp``) or starts earlier (``nbf``) than its parent."""


# --- rules --------------------------------------------------------------------------


class RuleError(ConfigError):
    """A rule cannot be used: it does not compile, type-check, or stay within its budget.

    Raised when an object is created or imported, never in the middle of a cycle.
    """


class RuleCostError(RuleError):
    """A rule's expression is larger or costlier than a rule may be."""


class TransferStreamError(EnvelopeError):
    """Streamed object data is truncated, too long, or does not match its signed digest."""
