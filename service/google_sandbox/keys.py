"""Google's ID-token signing keys: two published at a time, in two formats, rotated.

Facts (checked against public sources):

- Google publishes its signing keys as a JSON Web Key Set at `/oauth2/v3/certs` and as
  `{kid: PEM X.509 certificate}` at `/oauth2/v1/certs`, the same kids in both; v1 is
  google-auth's default `certs_url` (`google.oauth2.id_token._GOOGLE_OAUTH2_CERTS_URL`,
  and its docstring: the URL "should return JSON in the format of {'key id': 'x509
  certificate'} or a JWK Set"). Answers on the web show two keys at a time, 40-hex kids.
- Keys change "on the order of once per day" (google-auth's `id_token` module docstring),
  so a verifier that caches keys meets an unknown `kid` after a rotation and must refetch.

The sandbox keeps two keys, newest first, and signs with the newest. `rotate()` makes a
new signing key and keeps the previous one published, so ID tokens issued before the
rotation still verify while caches that fetched before it see an unknown kid.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import RSAKey

PUBLISHED_KEYS = 2
CERTIFICATE_LIFETIME = timedelta(days=14)


@dataclass(frozen=True, slots=True)
class SigningKey:
    jwk: RSAKey
    certificate_pem: str

    @property
    def kid(self) -> str:
        return str(self.jwk.kid)

    @classmethod
    def generate(cls) -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = secrets.token_hex(20)
        jwk = RSAKey.import_key(private, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
        return cls(jwk, _self_signed_certificate(private))


def _self_signed_certificate(private: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandbox.accounts.google.invalid")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .sign(private, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


class SigningKeys:
    """The published keys, newest (the one that signs) first."""

    def __init__(self) -> None:
        self.published: list[SigningKey] = [SigningKey.generate() for _ in range(PUBLISHED_KEYS)]

    @property
    def current(self) -> SigningKey:
        return self.published[0]

    def rotate(self) -> SigningKey:
        """A new signing key; the previous one stays published, the oldest goes."""
        self.published = [SigningKey.generate(), *self.published[: PUBLISHED_KEYS - 1]]
        return self.current

    def jwks(self) -> dict[str, list[dict[str, object]]]:
        return {"keys": [dict(key.jwk.as_dict(private=False)) for key in self.published]}

    def certificates(self) -> dict[str, str]:
        return {key.kid: key.certificate_pem for key in self.published}
