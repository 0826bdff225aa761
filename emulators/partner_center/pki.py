"""A throw-away PKI for signing emulated webhook callbacks.

Partner Center signs each callback with the key of a certificate issued to
``pcnotifications-dispatch.microsoft.com`` by a Microsoft CA. The emulator mirrors that with a root CA,
an intermediate CA (published through the leaf's AIA "CA Issuers" URL, as public CAs do) and the leaf,
plus two impostors for negative tests: a self-signed leaf with the right name, and a correctly chained
leaf with the wrong name.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

DEFAULT_SUBJECT = "pcnotifications-dispatch.microsoft.com"
DEFAULT_ISSUER_ORG = "Microsoft Corporation"
INTERMEDIATE_PATH = "/pki/intermediate-ca.cer"
ROOT_PEM_PATH = "/_emulator/ca.pem"


@dataclass(frozen=True)
class Signer:
    """A key that signs callbacks and the emulator path where its certificate is served (DER)."""

    name: str
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey
    path: str


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key: rsa.RSAPublicKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _self_signed_ca(common_name: str, organisation: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    name = _name(common_name, organisation)
    certificate = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _issue_ca(
    common_name: str, organisation: str, issuer: x509.Certificate, issuer_key: rsa.RSAPrivateKey
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    certificate = (
        _builder(_name(common_name, organisation), issuer.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(_authority_key_id(issuer), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return certificate, key


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _issue_leaf(
    host: str, organisation: str, issuer: x509.Certificate, issuer_key: rsa.RSAPrivateKey, ca_issuers_url: str
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    access = x509.AccessDescription(
        AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(ca_issuers_url)
    )
    certificate = (
        _builder(_name(host, organisation), issuer.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(_authority_key_id(issuer), critical=False)
        .add_extension(x509.AuthorityInformationAccess([access]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return certificate, key


def _self_signed_leaf(host: str, organisation: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    name = _name(host, organisation)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


class EmulatorPki:
    """Root, intermediate and signing leaves; ``base_url`` is where the emulator serves them."""

    def __init__(self, base_url: str, subject: str = DEFAULT_SUBJECT, issuer_org: str = DEFAULT_ISSUER_ORG) -> None:
        self.base_url = base_url.rstrip("/")
        self.subject, self.issuer_org = subject, issuer_org
        self.root, root_key = _self_signed_ca("Emulated Partner Center Root CA", issuer_org)
        self.intermediate, intermediate_key = _issue_ca(
            "Emulated Partner Center Issuing CA", issuer_org, self.root, root_key
        )
        aia = self.base_url + INTERMEDIATE_PATH
        leaf, leaf_key = _issue_leaf(subject, issuer_org, self.intermediate, intermediate_key, aia)
        other, other_key = _issue_leaf(
            "other-dispatch.example.com", issuer_org, self.intermediate, intermediate_key, aia
        )
        rogue, rogue_key = _self_signed_leaf(subject, issuer_org)
        self.signers: dict[str, Signer] = {
            "default": Signer("default", leaf, leaf_key, f"/cert/{subject}.cer"),
            "wrong-subject": Signer("wrong-subject", other, other_key, f"/cert/other/{subject}.cer"),
            "rogue": Signer("rogue", rogue, rogue_key, f"/cert/rogue/{subject}.cer"),
        }

    def signer(self, name: str = "default") -> Signer:
        if name not in self.signers:
            raise KeyError(f"unknown signer '{name}' (known: {', '.join(self.signers)})")
        return self.signers[name]

    def certificate_url(self, signer: str = "default") -> str:
        return self.base_url + self.signer(signer).path

    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def served_der(self, path: str) -> bytes | None:
        """DER of the certificate published at ``path`` (leaves and the intermediate), else None."""
        if path == INTERMEDIATE_PATH:
            return self.intermediate.public_bytes(serialization.Encoding.DER)
        for signer in self.signers.values():
            if signer.path == path:
                return signer.certificate.public_bytes(serialization.Encoding.DER)
        return None
