"""A trust domain's keys on disk: private signing keys and the domain's own trust bundle.

Layout of a keys directory (one per trust domain; it may hold keys of several hosts):

=====================  ===================================================================
``bundle.json``         the domain's current trust bundle (canonical JSON, public)
``<key id>.key``        one private key (PKCS#8 PEM, mode 0600), named by its key id
=====================  ===================================================================

Every change (a new key, a retirement, a revocation) writes a bundle with the next
sequence number, which peers must import to see it. Private keys never leave this
directory: bundles, exports and logs carry only public key records.

Retiring and revoking are one-way here as in :func:`gateway.trust.accept_bundle`: a
retired key is never chosen to sign again (whatever its ``retired_at``), and a key is
never un-revoked. Neither may leave the domain unable to sign its next bundle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from gateway._time import format_time
from gateway.errors import ConfigError, TrustError
from gateway.keys import Algorithm, KeyRecord, Purpose, Signer
from gateway.trust import TrustBundle, decode_bundle, encode_bundle, new_bundle, sign_bundle

BUNDLE_FILE = "bundle.json"
SIGNING_PURPOSES = frozenset({Purpose.ENVELOPE, Purpose.GRANT})


@dataclass(frozen=True, slots=True)
class Keyring:
    """A host's view of its domain's keys: the bundle, and the private keys it holds."""

    directory: Path
    bundle: TrustBundle
    signers: dict[str, Signer]

    def signer_for(self, purpose: Purpose, *, host: str, at: datetime) -> Signer:
        """The newest usable key for ``purpose`` by ``host`` whose private half is here."""
        # The purpose, revocation, host and validity rules peers verify with, in bundle order;
        # a retired key never signs again, even if its retirement time is still ahead.
        keys = self.bundle.resolver(purpose=purpose, host=host, at=at).all()
        usable = [r for r in keys if r.key_id in self.signers and r.retired_at is None]
        if not usable:
            # Say why each of the host's keys is out, so "retired my only key" reads as that.
            reasons = [
                f"{r.key_id[:16]} {_state(r, at)}"
                for r in self.bundle.keys
                if purpose in r.purposes and (not r.hosts or host in r.hosts)
            ]
            listed = f" (its keys: {', '.join(reasons)})" if reasons else ""
            raise ConfigError(
                f"{self.directory}: no usable {purpose.value} key for {host}{listed}",
                hint=f"add a new key with `gateway keys add --host {host}`, then export the "
                "bundle to every peer (`gateway trust export`)",
            )
        newest = max(usable, key=lambda r: r.valid_from)
        return self.signers[newest.key_id]

    def bundle_signers(self, at: datetime) -> list[Signer]:
        return [
            self.signers[r.key_id]
            for r in self.bundle.resolver(purpose=Purpose.BUNDLE, host=None, at=at).all()
            if r.key_id in self.signers and r.retired_at is None
        ]

    def export(self, at: datetime) -> bytes:
        """The bundle signed by this domain's bundle keys, for peers to import."""
        signers = self.bundle_signers(at)
        if len(signers) < self.bundle.bundle_threshold:
            raise ConfigError(
                f"{self.directory}: {len(signers)} bundle key(s) here, "
                f"{self.bundle.bundle_threshold} needed to sign the bundle",
                hint="run the export where the domain's bundle keys are",
            )
        return sign_bundle(self.bundle, signers[: max(1, self.bundle.bundle_threshold)])


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_bundle(directory: Path, bundle: TrustBundle) -> None:
    target = directory / BUNDLE_FILE
    temporary = directory / f".{BUNDLE_FILE}.tmp"
    temporary.write_bytes(encode_bundle(bundle))
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)


def _add_signer(directory: Path, signer: Signer) -> None:
    _write_private(directory / f"{signer.key_id}.key", signer.to_pem())


def init_keys(
    directory: Path,
    *,
    trust_domain: str,
    host: str,
    ca_certificate: bytes,
    at: datetime,
    algorithm: Algorithm = Algorithm.ED25519,
    valid_for: timedelta = timedelta(days=365),
) -> Keyring:
    """Create a domain's first keys: a bundle key, and a signing key for ``host``."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / BUNDLE_FILE).exists():
        raise ConfigError(
            f"{directory}: keys already exist",
            hint="use `gateway keys add` to add a key, or choose another directory",
        )
    bundle_key = Signer.generate(algorithm)
    signing_key = Signer.generate(algorithm)
    bundle = new_bundle(
        trust_domain,
        [
            bundle_key.record(purposes=[Purpose.BUNDLE], valid_from=at, valid_until=at + valid_for),
            signing_key.record(
                purposes=SIGNING_PURPOSES, hosts=[host], valid_from=at, valid_until=at + valid_for
            ),
        ],
        x509_authorities=[ca_certificate],
        issued_at=at,
    )
    for signer in (bundle_key, signing_key):
        _add_signer(directory, signer)
    _write_bundle(directory, bundle)
    return load_keyring(directory)


def add_key(
    directory: Path,
    *,
    host: str,
    at: datetime,
    algorithm: Algorithm = Algorithm.ED25519,
    valid_for: timedelta = timedelta(days=365),
) -> tuple[Keyring, Signer]:
    """Add a signing key for ``host`` (rotation: the newest valid key signs from now on)."""
    keyring = load_keyring(directory)
    signer = Signer.generate(algorithm)
    record = signer.record(
        purposes=SIGNING_PURPOSES, hosts=[host], valid_from=at, valid_until=at + valid_for
    )
    _add_signer(directory, signer)
    _write_bundle(directory, keyring.bundle.with_key(record, issued_at=at))
    return load_keyring(directory), signer


def _state(record: KeyRecord, at: datetime) -> str:
    if record.revoked:
        return "revoked"
    if record.retired_at is not None:
        return f"retired at {format_time(record.retired_at)}"
    if not record.valid_at(at):
        return "outside its validity"
    return "private key not here"


def find_key(keyring: Keyring, key_id: str) -> KeyRecord:
    """The one key record whose id starts with ``key_id`` (as `gateway keys list` shows it)."""
    prefix = key_id.strip().rstrip("…").lower()
    matches = [r for r in keyring.bundle.keys if prefix and r.key_id.startswith(prefix)]
    if len(matches) != 1:
        raise ConfigError(
            f"key id {key_id!r} matches {len(matches)} keys in {keyring.directory}",
            hint="give more of the key id (see `gateway keys list`)",
        )
    return matches[0]


def _replace_record(keyring: Keyring, record: KeyRecord, *, at: datetime, action: str) -> Keyring:
    """Write the next bundle with ``record`` changed, if the domain can still sign bundles."""
    try:
        bundle = keyring.bundle.with_key(record, issued_at=at)
    except TrustError as exc:  # a threshold that the remaining keys cannot meet
        raise ConfigError(
            f"cannot {action} key {record.key_id[:16]}: {exc.reason}", hint=exc.hint
        ) from exc
    # Peers accept the next bundle only if it is signed by bundle keys; leaving fewer
    # usable ones here than the threshold would make this the domain's last bundle.
    remaining = Keyring(directory=keyring.directory, bundle=bundle, signers=keyring.signers)
    if Purpose.BUNDLE in record.purposes and (
        len(remaining.bundle_signers(at)) < bundle.bundle_threshold
    ):
        raise ConfigError(
            f"cannot {action} key {record.key_id[:16]}: it is the last bundle key here, and "
            "without one the domain can never publish another bundle (not even this change)",
            hint="keep it; a bundle key signs only bundles, so retire or revoke the host's "
            "signing keys instead",
        )
    _write_bundle(keyring.directory, bundle)
    return load_keyring(keyring.directory)


def retire_key(directory: Path, key_id: str, *, at: datetime) -> tuple[Keyring, KeyRecord]:
    """Retire a key in the next bundle: it signs nothing from ``at`` on, and peers that
    import the bundle refuse its newer signatures, but what it signed before stays valid.

    Returns the keyring and the key's record as it now stands (an already retired or
    revoked key is left as it is: retiring never moves a retirement later).
    """
    keyring = load_keyring(directory)
    record = find_key(keyring, key_id)
    if record.revoked or record.retired_at is not None:
        return keyring, record
    retired = replace(record, retired_at=at)
    return _replace_record(keyring, retired, at=at, action="retire"), retired


def revoke_key(directory: Path, key_id: str, *, at: datetime) -> Keyring:
    """Mark a key revoked in the next bundle; peers refuse its signatures once they import it."""
    keyring = load_keyring(directory)
    record = find_key(keyring, key_id)
    if record.revoked:
        return keyring
    return _replace_record(keyring, replace(record, revoked=True), at=at, action="revoke")


def load_keyring(directory: Path) -> Keyring:
    try:
        raw = (directory / BUNDLE_FILE).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{directory}: no {BUNDLE_FILE}", hint="create keys with `gateway keys init`"
        ) from None
    except OSError as exc:  # a directory, no permission, an I/O error: not a crash
        raise ConfigError(
            f"{directory / BUNDLE_FILE}: cannot read: {exc.strerror or exc}",
            hint="the keys directory must hold the domain's bundle.json, readable by the gateway",
        ) from exc
    try:
        bundle = decode_bundle(raw)
    except TrustError as exc:
        raise ConfigError(f"{directory / BUNDLE_FILE}: {exc.reason}", hint=exc.hint) from exc
    signers: dict[str, Signer] = {}
    for path in sorted(directory.glob("*.key")):
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot read: {exc.strerror or exc}",
                hint="each <key id>.key is a private key file readable by the gateway",
            ) from exc
        signer = Signer.from_pem(pem, source=str(path))
        if signer.key_id != path.stem:
            raise ConfigError(f"{path}: holds key {signer.key_id[:16]}…, not the key its name says")
        signers[signer.key_id] = signer
    return Keyring(directory=directory, bundle=bundle, signers=signers)
