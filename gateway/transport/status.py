"""The one table from gateway errors to gRPC status codes, and back.

A server aborts with the status code from :data:`STATUS` and puts the error's type name
in the ``gateway-error`` trailing metadata; the client raises the same type again with
the peer's reason, so code on both sides matches on error types, never on strings.
"""

from __future__ import annotations

import grpc

from gateway import errors

ERROR_TYPE_KEY = "gateway-error"
#: Trailing metadata of a refusal because the object moved: the host holding it now.
MOVED_TO_KEY = "gateway-moved-to"

#: The most of a peer's refusal kept here, of its reason and of its hint: the peer's
#: words (up to gRPC's 8 KiB of status details) are printed by the CLI, logged, and
#: journaled by a source as its abort reason. Room for this gateway's own longest
#: messages (a revoked key's reason and hint are some 300 characters each).
MAX_PEER_REASON_CHARS = 1024
MAX_PEER_HINT_CHARS = 1024

#: Most specific first; the first entry the error is an instance of wins.
STATUS: tuple[tuple[type[errors.GatewayError], grpc.StatusCode], ...] = (
    (errors.PeerMismatchError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.AudienceError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.UntrustedKeyError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.BadSignatureError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ExpiredError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ReplayError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.RollbackError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.VerificationError, grpc.StatusCode.UNAUTHENTICATED),
    # Not RESOURCE_EXHAUSTED: clients retry that, and a too-large message stays too large.
    (errors.VersionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.EnvelopeTooLargeError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.EnvelopeError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.TrustError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AuthorityError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.LineageError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.MigrationNotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.MigrationAbortedError, grpc.StatusCode.ABORTED),
    # Retryable: the migration that froze the object settles within its own deadlines.
    (errors.ObjectBusyError, grpc.StatusCode.UNAVAILABLE),
    (errors.ObjectStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UnknownPeerError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.PeerUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.HandoffError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ConcurrencyError, grpc.StatusCode.ABORTED),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.StoreError, grpc.StatusCode.INTERNAL),
    (errors.ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.GatewayError, grpc.StatusCode.INTERNAL),
)

#: Codes worth retrying: the call may not have reached the peer, or the peer was busy.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def status_of(error: errors.GatewayError) -> grpc.StatusCode:
    for kind, code in STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _error_types() -> dict[str, type[errors.GatewayError]]:
    found: dict[str, type[errors.GatewayError]] = {}
    pending: list[type[errors.GatewayError]] = [errors.GatewayError]
    while pending:
        kind = pending.pop()
        found[kind.__name__] = kind
        pending.extend(kind.__subclasses__())
    return found


def error_from_status(
    code: grpc.StatusCode, details: str, type_name: str | None, *, peer: str
) -> errors.GatewayError:
    """The error a peer raised, rebuilt from its status; unknown types become HandoffError.
    The peer's words are kept as one line of printable characters, bounded (:func:`peer_text`)."""
    kind = _error_types().get(type_name or "", errors.HandoffError)
    reason, _, hint = details.partition(" — ")
    reason, hint = peer_text(reason, MAX_PEER_REASON_CHARS), peer_text(hint, MAX_PEER_HINT_CHARS)
    if kind is errors.ObjectMovedError:  # needs where it went; its caller reads the trailer
        kind = errors.ObjectStateError
    return kind(
        f"{peer} refused: {reason}" if reason else f"{peer} answered {code.name}", hint=hint or None
    )


def peer_text(text: str, limit: int = MAX_PEER_REASON_CHARS) -> str:
    """``text`` with every character that is not printable (newlines, terminal escapes)
    shown as ``?``, cut to ``limit`` characters."""
    kept = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return kept if len(kept) <= limit else kept[: limit - 1] + "…"
