"""Message signatures: one RSA key and self-signed X.509 certificate per deployment, kept in the database.

Every server on one database signs with the same key, so a subscriber that fetched the certificate from one
verifies messages from all. The certificate is served at ``/SimpleNotificationService-<hex>.pem`` (the name
AWS uses; the hex is the certificate's fingerprint, so a new key would get a new URL). SignatureVersion 1
signs with SHA1, 2 with SHA256 (RSA PKCS#1 v1.5, base64), over AWS's string to sign.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from mlharbor.store.db import Store
from mlharbor.store.tables import server_state

STATE_KEY = "sns.signing"
CERT_PREFIX = "/SimpleNotificationService-"
# Fields signed, in AWS's order, per message type (Subject only when the message has one).
NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


def _generate() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MLHarbor SNS message signing")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem.decode("ascii") + certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _load_or_create(store: Store) -> str:
    with store.read() as conn:
        value = conn.execute(select(server_state.c.value).where(server_state.c.key == STATE_KEY)).scalar()
    if value is not None:
        return value
    try:
        with store.begin() as conn:
            conn.execute(insert(server_state).values(key=STATE_KEY, value=_generate()))
    except IntegrityError:
        pass  # another server created it first: everyone signs with theirs
    with store.read() as conn:
        return conn.execute(select(server_state.c.value).where(server_state.c.key == STATE_KEY)).scalar_one()


class Signer:
    """Loads (or creates, once per deployment) the key on first use; safe to share between threads."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._key: rsa.RSAPrivateKey | None = None
        self._certificate = b""
        self._path = ""

    def _ensure(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._key is None:
                pem = _load_or_create(self._store).encode("ascii")
                key = serialization.load_pem_private_key(pem, password=None)
                assert isinstance(key, rsa.RSAPrivateKey)
                certificate = x509.load_pem_x509_certificate(pem)
                self._certificate = certificate.public_bytes(serialization.Encoding.PEM)
                fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
                self._path = f"{CERT_PREFIX}{fingerprint[:32]}.pem"
                self._key = key
            return self._key

    @property
    def certificate_path(self) -> str:
        self._ensure()
        return self._path

    def certificate(self, path: str) -> tuple[str, bytes] | None:
        self._ensure()
        return ("application/x-pem-file", self._certificate) if path == self._path else None

    def sign(self, document: dict[str, Any], version: str) -> str:
        fields = NOTIFICATION_FIELDS if document["Type"] == "Notification" else CONFIRMATION_FIELDS
        text = "".join(f"{name}\n{document[name]}\n" for name in fields if name in document)
        signature = self._ensure().sign(text.encode("utf-8"), padding.PKCS1v15(), _HASHES[version]())
        return base64.b64encode(signature).decode("ascii")
