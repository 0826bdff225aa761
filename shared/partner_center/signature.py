"""Verification of Partner Center webhook callbacks.

A callback is accepted only when its RSA-SHA256 (PKCS#1 v1.5) signature over the exact raw body verifies
with the public key of a certificate that was downloaded from an allowed URL prefix, chains to a trusted
root, is issued to the expected host name and was issued by the expected organisation. Anything else
raises :class:`shared.domain.errors.WebhookRejected`; its message is safe to log and return (no signature
bytes, no certificate contents).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import unquote, urlsplit

import certifi
import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from ..domain.errors import WebhookRejected

__all__ = ["HttpGet", "VerifierConfig", "WebhookRejected", "WebhookVerifier"]

log = logging.getLogger(__name__)

HttpGet = Callable[[str], bytes]

DEFAULT_SUBJECT = "pcnotifications-dispatch.microsoft.com"
DEFAULT_ISSUER_ORG = "Microsoft Corporation"
SUPPORTED_ALGORITHM = "rsa-sha256"
MAX_CERTIFICATE_BYTES = 64 * 1024
MAX_AIA_URLS = 2
# How long a certificate URL that failed (download, identity or chain) is refused without a new download.
FAILURE_CACHE_SECONDS = 60.0
_DEFAULT_PORTS = {"https": 443, "http": 80}
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
T = TypeVar("T")


def _reject(status: int, message: str) -> WebhookRejected:
    # Debug only: the intake logs every rejection once, at warning level.
    log.debug("Partner Center webhook rejected (%s): %s", status, message)
    return WebhookRejected(status, message)


@dataclass(frozen=True)
class _Prefix:
    scheme: str
    host: str
    port: int
    path: str


def _parse_prefix(prefix: str) -> _Prefix:
    parts = urlsplit(prefix.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"certificate URL prefix '{prefix}' must be an absolute http(s) URL")
    return _Prefix(scheme, parts.hostname.lower(), parts.port or _DEFAULT_PORTS[scheme], parts.path or "/")


def _path_within(path: str, prefix: str) -> bool:
    # "/cert" must not admit "/certificates-of-someone-else": match whole path segments.
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def _load_certificates(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _default_http_get(url: str) -> bytes:
    # No redirects: a redirect could leave the allowed prefix after the check.
    with requests.get(url, timeout=10, allow_redirects=False, stream=True) as response:
        if response.status_code != 200:
            raise OSError(f"HTTP {response.status_code}")
        data = response.raw.read(MAX_CERTIFICATE_BYTES + 1, decode_content=True)
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise OSError("certificate too large")
    return data


@dataclass
class _Cached(Generic[T]):
    value: T
    expires: float


class _BoundedCache(Generic[T]):
    """Values by URL, each with an expiry; when full, expired entries go first, then the least recently used.

    Verified certificates and refusals live in separate caches, so a flood of bad certificate URLs can
    only push out other refusals, never a certificate that verified."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._entries: OrderedDict[str, _Cached[T]] = OrderedDict()
        self._max, self._clock = max_entries, clock
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.expires <= self._clock():
                self._entries.pop(key, None)
                return None
            self._entries.move_to_end(key)
            return entry.value

    def put(self, key: str, value: T, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            self._entries[key] = _Cached(value, self._clock() + ttl)
            self._entries.move_to_end(key)
            if len(self._entries) > self._max:
                now = self._clock()
                for stale in [k for k, e in self._entries.items() if e.expires <= now]:
                    del self._entries[stale]
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


class _SingleFlight:
    """One lock per key, alive while someone holds or waits for it: concurrent callbacks signed with the
    same certificate wait for one download instead of each starting their own."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


@dataclass(frozen=True)
class VerifierConfig:
    """Which signing certificates are trusted: where they may be downloaded from, the roots their chain must
    reach (None: the system's), the host name they are issued to and the organisation that issued them."""

    allowed_cert_url_prefixes: Sequence[str]
    ca_bundle_path: str | Path | None = None
    expected_subject: str = DEFAULT_SUBJECT
    issuer_org: str = DEFAULT_ISSUER_ORG


class WebhookVerifier:
    def __init__(
        self,
        config: VerifierConfig,
        *,
        http_get: HttpGet | None = None,
        cache_seconds: float = 3600.0,
        max_cached: int = 16,
        failure_cache_seconds: float = FAILURE_CACHE_SECONDS,
        max_failures_cached: int = 256,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._prefixes = [_parse_prefix(p) for p in config.allowed_cert_url_prefixes if p.strip()]
        if not self._prefixes:
            raise ValueError("at least one allowed certificate URL prefix is required")
        self.expected_subject, self.issuer_org = config.expected_subject.lower(), config.issuer_org
        self._http_get = http_get or _default_http_get
        self._cache_seconds = cache_seconds
        self._now = now
        self._failure_cache_seconds = failure_cache_seconds
        self._leaves: _BoundedCache[x509.Certificate] = _BoundedCache(max_cached, clock)
        self._intermediates: _BoundedCache[list[x509.Certificate]] = _BoundedCache(max_cached, clock)
        self._failures: _BoundedCache[tuple[int, str]] = _BoundedCache(max_failures_cached, clock)
        self._downloads = _SingleFlight()
        self._store = Store(_trusted_roots(config.ca_bundle_path))
        # The signing certificate is not a TLS server certificate by purpose, so its extended key
        # usage is not required to name serverAuth; every other web PKI rule still applies.
        self._ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None
        )

    def verify(self, headers: Mapping[str, str], raw_body: bytes) -> None:
        """Return when the callback is genuine; raise :class:`WebhookRejected` otherwise."""
        lowered = {str(k).lower(): str(v) for k, v in headers.items()}
        signature = _signature(lowered)
        algorithm = lowered.get("x-ms-signature-algorithm", "").strip()
        if not algorithm:
            raise _reject(401, "the X-MS-Signature-Algorithm header is missing")
        if algorithm.lower() != SUPPORTED_ALGORITHM:
            raise _reject(400, "unsupported signature algorithm; expected rsa-sha256")
        certificate_url = lowered.get("x-ms-certificate-url", "").strip()
        if not certificate_url:
            raise _reject(401, "the X-MS-Certificate-Url header is missing")
        canonical = self._allowed_canonical_url(certificate_url)
        if canonical is None:
            raise _reject(401, "the signing certificate URL is not on the allowed list")
        public_key = self._certificate(canonical).public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise _reject(401, "the signing certificate does not hold an RSA key")
        try:
            public_key.verify(signature, bytes(raw_body), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise _reject(401, "the signature does not match the request body") from None

    def is_allowed_certificate_url(self, url: str) -> bool:
        return self._allowed_canonical_url(url) is not None

    def _allowed_canonical_url(self, url: str) -> str | None:
        """The one spelling of an allowed certificate URL (what is fetched and cached), or None.

        A query, fragment or user name would let a caller mint endless distinct URLs for one certificate,
        each a fresh download and cache entry; spellings that differ only in case or a default port map to
        one entry."""
        if any(ord(ch) <= 0x20 or ch in "\\?#@" for ch in url):
            return None
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            return None
        # Percent-encoding and dot segments could make the fetched path differ from the checked one.
        if unquote(parts.path) != parts.path or any(s in (".", "..") for s in parts.path.split("/")):
            return None
        host, port = parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]
        if not any(
            p.scheme == scheme and p.host == host and p.port == port and _path_within(parts.path, p.path)
            for p in self._prefixes
        ):
            return None
        authority = f"[{host}]" if ":" in host else host
        if port != _DEFAULT_PORTS[scheme]:
            authority += f":{port}"
        return f"{scheme}://{authority}{parts.path}"

    def _certificate(self, url: str) -> x509.Certificate:
        leaf = self._known(url)
        if leaf is not None:
            return leaf
        with self._downloads.hold(url):
            leaf = self._known(url)  # another callback may have fetched it while this one waited
            if leaf is not None:
                return leaf
            try:
                leaf = self._download_and_check(url)
            except WebhookRejected as exc:
                # Brief, so a certificate that was briefly unreachable is tried again soon.
                self._failures.put(url, (exc.status, str(exc)), self._failure_cache_seconds)
                raise
            remaining = (leaf.not_valid_after_utc - self._now()).total_seconds()
            self._leaves.put(url, leaf, min(self._cache_seconds, remaining))
            return leaf

    def _known(self, url: str) -> x509.Certificate | None:
        """The verified certificate cached for ``url``; raises the cached refusal if it recently failed."""
        leaf = self._leaves.get(url)
        if leaf is not None:
            return leaf
        failure = self._failures.get(url)
        if failure is not None:
            raise _reject(*failure)
        return None

    def _download_and_check(self, url: str) -> x509.Certificate:
        try:
            leaf = _load_certificates(self._http_get(url))[0]
        except (OSError, requests.RequestException, ValueError, IndexError):
            raise _reject(401, "the signing certificate could not be downloaded or read") from None
        self._check_identity(leaf)
        self._check_chain(leaf)
        return leaf

    def _check_identity(self, leaf: x509.Certificate) -> None:
        names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        try:
            names += leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName
            )
        except x509.ExtensionNotFound:
            pass
        if self.expected_subject not in {n.lower() for n in names}:
            raise _reject(401, f"the signing certificate is not issued to {self.expected_subject}")
        organisations = [str(a.value) for a in leaf.issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        if not any(self.issuer_org.lower() in o.lower() for o in organisations):
            raise _reject(401, f"the signing certificate was not issued by {self.issuer_org}")

    def _check_chain(self, leaf: x509.Certificate) -> None:
        try:
            verifier = (
                PolicyBuilder()
                .store(self._store)
                .time(self._now())
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=self._ee_policy)
                .build_server_verifier(x509.DNSName(self.expected_subject))
            )
            verifier.verify(leaf, self._aia_intermediates(leaf))
        except (VerificationError, ValueError):
            raise _reject(401, "the signing certificate does not chain to a trusted root") from None

    def _aia_intermediates(self, leaf: x509.Certificate) -> list[x509.Certificate]:
        try:
            access = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        except x509.ExtensionNotFound:
            return []
        urls = [
            str(d.access_location.value)
            for d in access
            if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
            and isinstance(d.access_location, x509.UniformResourceIdentifier)
            and urlsplit(str(d.access_location.value)).scheme.lower() in _DEFAULT_PORTS
        ]
        found: list[x509.Certificate] = []
        for url in urls[:MAX_AIA_URLS]:
            cached = self._intermediates.get(url)
            if cached is None:
                try:
                    cached = _load_certificates(self._http_get(url))
                except (OSError, requests.RequestException, ValueError):
                    continue  # the chain check then fails with its own, clearer reason
                self._intermediates.put(url, cached, self._cache_seconds)
            found.extend(cached)
        return found


def _signature(headers: Mapping[str, str]) -> bytes:
    raw = headers.get("x-ms-signature")
    if raw is None:
        authorization = headers.get("authorization")
        if authorization is None:
            raise _reject(401, "the callback carries no signature")
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "signature":
            raise _reject(401, "the Authorization header does not carry a Signature")
        raw = value
    raw = raw.strip()
    if raw.lower().startswith("signature "):
        raw = raw[len("signature ") :].strip()
    try:
        signature = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise _reject(401, "the signature is not valid base64") from None
    if not signature:
        raise _reject(401, "the callback carries an empty signature")
    return signature


def _trusted_roots(ca_bundle_path: str | Path | None) -> list[x509.Certificate]:
    path = Path(ca_bundle_path) if ca_bundle_path else Path(certifi.where())
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read trusted CA certificates from {path}: {type(exc).__name__}") from None
    roots: list[x509.Certificate] = []
    with warnings.catch_warnings():
        # Public bundles hold a few legacy roots that newer cryptography releases warn about or refuse;
        # one such root must not disable all the others.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for block in _PEM_BLOCK.findall(data):
            try:
                roots.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue
    if not roots:
        raise ValueError(f"no CA certificates found in {path}")
    return roots
