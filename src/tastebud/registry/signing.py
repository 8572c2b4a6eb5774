"""Signed bundle manifests: Ed25519 (recommended) or HMAC-SHA256.

``manifest.json`` lists the sha256 of every other file of a bundle, so a signature over the manifest's exact bytes
covers the whole bundle: altering a file and recomputing its checksum in the manifest changes the manifest, and
the signature no longer verifies. The signature lives beside the manifest in ``signature.json``::

    {"scheme": "ed25519", "key_id": "3f2a...", "signature": "<base64>", "manifest_sha256": "<hex>"}

Ed25519 keeps the secret on the training side: training and registration sign with the private key, serving
verifies with the public key (``tastebud models keygen`` writes a pair). HMAC-SHA256 uses one shared secret on
both sides, for a single trusted host. Keys come from :class:`tastebud.config.SigningSettings`.

With a verification key configured, an unsigned bundle, a bundle signed by another key or under another scheme,
and a bundle whose manifest changed after signing are all refused with :class:`~tastebud.errors.BundleError`.
Without one, bundles load as before and are reported as not signed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tastebud.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from tastebud.config import Settings, SigningSettings

#: The signature file beside ``manifest.json`` (not listed in the manifest: it signs the manifest).
SIGNATURE = "signature.json"
ED25519, HMAC_SHA256 = "ed25519", "hmac-sha256"
#: Default file names written by :func:`generate_keypair`.
PRIVATE_KEY_FILE, PUBLIC_KEY_FILE = "tastebud-signing.key", "tastebud-signing.pub"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _ed25519_key_id(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _hmac_key_id(secret: bytes) -> str:
    # An id that names the secret without revealing it (an HMAC of a constant, not a hash of the secret).
    return hmac.new(secret, b"tastebud-key-id", hashlib.sha256).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- keys
def generate_keypair(directory: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair into ``directory``: the private key (mode 0600) and the public key (PEM).

    Returns:
        (private key path, public key path).

    Raises:
        ConfigError: a key file exists already and ``overwrite`` is false.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(directory)
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists() and not overwrite:
            raise ConfigError(f"{path}: a key exists already (pass --overwrite to replace it)")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if private_path.exists():
        private_path.unlink()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def _load_private(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{path}: cannot read the Ed25519 private signing key ({err})") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return key


def _load_public(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{path}: cannot read the Ed25519 public verification key ({err})") from err
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key


# ---------------------------------------------------------------------------------------------------- signing
@dataclass(frozen=True)
class Signer:
    """Signs manifests with an Ed25519 private key or an HMAC secret (exactly one of them)."""

    private_key: Ed25519PrivateKey | None = None
    hmac_key: bytes | None = None

    @property
    def scheme(self) -> str:
        """``ed25519`` or ``hmac-sha256``."""
        return ED25519 if self.private_key is not None else HMAC_SHA256

    @property
    def key_id(self) -> str:
        """Short id of the key (of the public half for Ed25519)."""
        if self.private_key is not None:
            return _ed25519_key_id(self.private_key.public_key())
        assert self.hmac_key is not None
        return _hmac_key_id(self.hmac_key)

    def signature(self, manifest: bytes) -> dict[str, str]:
        """The signature record of the manifest's bytes (what ``signature.json`` holds)."""
        if self.private_key is not None:
            raw = self.private_key.sign(manifest)
        else:
            assert self.hmac_key is not None
            raw = hmac.new(self.hmac_key, manifest, hashlib.sha256).digest()
        return {
            "scheme": self.scheme,
            "key_id": self.key_id,
            "signature": _b64(raw),
            "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        }

    def sign_bundle(self, directory: Path) -> dict[str, str]:
        """Sign ``directory/manifest.json``, writing ``signature.json``; returns the record."""
        from tastebud.registry.bundle import MANIFEST

        directory = Path(directory)
        record = self.signature((directory / MANIFEST).read_bytes())
        (directory / SIGNATURE).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
        return record


@dataclass(frozen=True)
class Verifier:
    """Checks ``signature.json`` against the configured keys (none configured: nothing is required)."""

    public_key: Ed25519PublicKey | None = None
    hmac_key: bytes | None = None

    @property
    def configured(self) -> bool:
        """Whether a key is configured (then every bundle must carry a valid signature)."""
        return self.public_key is not None or self.hmac_key is not None

    def check(self, directory: Path, manifest_bytes: bytes | None = None) -> dict[str, Any]:
        """Verify the bundle's manifest signature.

        Returns:
            ``{"signed": bool, "scheme": ..., "key_id": ...}``: ``signed`` is true only for a signature verified
            against a configured key; without a key nothing is verified and ``signed`` is false.

        Raises:
            BundleError: a key is configured and the bundle is unsigned, signed by another key or scheme, or its
                manifest changed after signing (the message names the file).
        """
        from tastebud.registry.bundle import MANIFEST

        directory = Path(directory)
        sig_path = directory / SIGNATURE
        if not self.configured:
            return {"signed": False, "scheme": None, "key_id": None}
        if not sig_path.is_file():
            raise BundleError(
                f"{sig_path}: bundle is not signed, and a verification key is configured (signing settings); "
                "sign it with the training side's key"
            )
        try:
            record = json.loads(sig_path.read_text(encoding="utf-8"))
            scheme, key_id = str(record["scheme"]), str(record.get("key_id", ""))
            raw = base64.b64decode(str(record["signature"]), validate=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise BundleError(f"{sig_path}: malformed signature file ({err})") from err
        data = manifest_bytes if manifest_bytes is not None else (directory / MANIFEST).read_bytes()
        if scheme == ED25519:
            if self.public_key is None:
                raise BundleError(f"{sig_path}: signed with ed25519 but no public key is configured to verify it")
            expected_id = _ed25519_key_id(self.public_key)
            if key_id != expected_id:
                raise BundleError(
                    f"{sig_path}: signed by key {key_id}, not by the configured key {expected_id} (wrong key)"
                )
            from cryptography.exceptions import InvalidSignature

            try:
                self.public_key.verify(raw, data)
            except InvalidSignature as err:
                raise BundleError(
                    f"{directory / MANIFEST}: signature does not verify (the manifest changed after signing)"
                ) from err
        elif scheme == HMAC_SHA256:
            if self.hmac_key is None:
                raise BundleError(f"{sig_path}: signed with hmac-sha256 but no HMAC key is configured to verify it")
            expected_id = _hmac_key_id(self.hmac_key)
            if key_id != expected_id:
                raise BundleError(
                    f"{sig_path}: signed by key {key_id}, not by the configured key {expected_id} (wrong key)"
                )
            if not hmac.compare_digest(raw, hmac.new(self.hmac_key, data, hashlib.sha256).digest()):
                raise BundleError(
                    f"{directory / MANIFEST}: signature does not verify (the manifest changed after signing)"
                )
        else:
            raise BundleError(f"{sig_path}: unknown signature scheme {scheme!r} (expected {ED25519} or {HMAC_SHA256})")
        return {"signed": True, "scheme": scheme, "key_id": key_id}


def _secret(cfg: SigningSettings) -> bytes | None:
    if cfg.hmac_key is None:
        return None
    value = cfg.hmac_key.get_secret_value().encode("utf-8")
    if not value:
        return None
    if len(value) < 16:
        raise ConfigError("signing.hmac_key: use a secret of at least 16 bytes")
    return value


def signer_from_settings(settings: Settings) -> Signer | None:
    """The signer of the training side: the Ed25519 private key, else the HMAC secret, else ``None``.

    Raises:
        ConfigError: a configured key cannot be read.
    """
    cfg = settings.signing
    if cfg.private_key_path is not None:
        return Signer(private_key=_load_private(cfg.private_key_path))
    secret = _secret(cfg)
    return Signer(hmac_key=secret) if secret is not None else None


def verifier_from_settings(settings: Settings) -> Verifier:
    """The verifier: the configured public key (or the private key's public half) and/or the HMAC secret.

    Raises:
        ConfigError: a configured key cannot be read.
    """
    cfg = settings.signing
    public: Ed25519PublicKey | None = None
    if cfg.public_key_path is not None:
        public = _load_public(cfg.public_key_path)
    elif cfg.private_key_path is not None:
        public = _load_private(cfg.private_key_path).public_key()
    return Verifier(public_key=public, hmac_key=_secret(cfg))


__all__ = [
    "ED25519",
    "HMAC_SHA256",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "SIGNATURE",
    "Signer",
    "Verifier",
    "generate_keypair",
    "signer_from_settings",
    "verifier_from_settings",
]
