"""WebhookVerifier on callbacks really delivered by the emulator to a local receiver."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_der_x509_certificate

from emulators.partner_center import PartnerCenterEmulator
from emulators.partner_center.receiver import WebhookReceiver
from shared.domain.errors import WebhookRejected
from shared.partner_center.signature import VerifierConfig, WebhookVerifier

AUTH = {"Authorization": "Bearer test-token"}


@pytest.fixture(scope="module")
def emu() -> Iterator[PartnerCenterEmulator]:
    emulator = PartnerCenterEmulator(dispatch_mode="sync").start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


@pytest.fixture(scope="module")
def ca_bundle(emu: PartnerCenterEmulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return emu.write_ca_bundle(tmp_path_factory.mktemp("pki") / "ca.pem")


class RecordingGet:
    """The verifier's downloader, recording every URL it was asked to fetch."""

    def __init__(self, transform: bool = False) -> None:
        self.urls: list[str] = []
        self.to_pem = transform

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        response = requests.get(url, timeout=5, allow_redirects=False)
        if response.status_code != 200:
            raise OSError(f"HTTP {response.status_code}")
        if self.to_pem:
            certificate = load_der_x509_certificate(response.content)
            return certificate.public_bytes(serialization.Encoding.PEM)
        return response.content


@pytest.fixture
def fetch() -> RecordingGet:
    return RecordingGet()


@pytest.fixture
def verifier(emu: PartnerCenterEmulator, ca_bundle: Path, fetch: RecordingGet) -> WebhookVerifier:
    return WebhookVerifier(VerifierConfig([f"{emu.url}/cert/"], ca_bundle), http_get=fetch)


@pytest.fixture(autouse=True)
def fresh(emu: PartnerCenterEmulator, receiver: WebhookReceiver) -> None:
    emu.reset()
    receiver.clear()
    register(emu, receiver, ms_header=False)


def register(emu: PartnerCenterEmulator, receiver: WebhookReceiver, ms_header: bool) -> None:
    body = {
        "WebhookUrl": receiver.hook_url,
        "WebhookEvents": ["referral-created", "referral-updated"],
        "SignatureTokenToMsSignatureHeader": ms_header,
    }
    requests.put(f"{emu.url}/webhooks/v1/registration", json=body, headers=AUTH, timeout=5).raise_for_status()


def delivered(receiver: WebhookReceiver, index: int = -1) -> tuple[dict[str, str], bytes]:
    request = receiver.wait_for(1)[index]
    return dict(request.headers), request.body


def genuine(emu: PartnerCenterEmulator, receiver: WebhookReceiver) -> tuple[dict[str, str], bytes]:
    emu.seed_referral()
    return delivered(receiver)


def rejected(verifier: WebhookVerifier, headers: dict[str, str], body: bytes) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as raised:
        verifier.verify(headers, body)
    return raised.value


# -- genuine callbacks ------------------------------------------------------------------------------------------
def test_accepts_a_genuine_delivery_with_the_authorization_header(emu, receiver, verifier, fetch):
    headers, body = genuine(emu, receiver)
    assert headers["authorization"].startswith("Signature ")
    verifier.verify(headers, body)
    assert fetch.urls == [emu.certificate_url(), emu.pki.base_url + "/pki/intermediate-ca.cer"]


def test_accepts_a_genuine_delivery_with_the_x_ms_signature_header(emu, receiver, verifier):
    register(emu, receiver, ms_header=True)
    headers, body = genuine(emu, receiver)
    assert "authorization" not in headers
    verifier.verify(headers, body)
    bare = {**headers, "x-ms-signature": headers["x-ms-signature"].removeprefix("Signature ")}
    verifier.verify(bare, body)


def test_header_names_are_case_insensitive(emu, receiver, verifier):
    headers, body = genuine(emu, receiver)
    shouting = {name.upper(): value for name, value in headers.items()}
    verifier.verify(shouting, body)


def test_certificates_are_cached_between_callbacks(emu, receiver, verifier, fetch):
    referral = emu.seed_referral()
    emu.portal_update(referral["id"], {"name": "changed"})
    first, second = receiver.wait_for(2)
    verifier.verify(first.headers, first.body)
    verifier.verify(second.headers, second.body)
    assert len(fetch.urls) == 2  # the leaf and its intermediate, once each


def test_a_duplicate_delivery_verifies_too(emu, receiver, verifier):
    referral = emu.seed_referral()
    emu.redeliver(referral["id"])
    original, duplicate = receiver.wait_for(2)
    assert duplicate.body == original.body
    verifier.verify(duplicate.headers, duplicate.body)


def test_pem_certificates_are_accepted(emu, receiver, ca_bundle):
    headers, body = genuine(emu, receiver)
    WebhookVerifier(VerifierConfig([f"{emu.url}/cert/"], ca_bundle), http_get=RecordingGet(transform=True)).verify(
        headers, body
    )


# -- forged or damaged callbacks ----------------------------------------------------------------------------------
def test_rejects_a_tampered_body(emu, receiver, verifier):
    headers, body = genuine(emu, receiver)
    payload = json.loads(body)
    payload["ResourceUri"] = payload["ResourceUri"][:-1] + ("0" if payload["ResourceUri"][-1] != "0" else "1")
    error = rejected(verifier, headers, json.dumps(payload).encode())
    assert error.status == 401 and "does not match" in str(error)


def test_rejects_a_reserialised_body(emu, receiver, verifier):
    headers, body = genuine(emu, receiver)
    reformatted = json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert reformatted != body
    assert rejected(verifier, headers, reformatted).status == 401


def test_rejects_a_corrupted_signature_and_keeps_it_out_of_the_message(emu, receiver, verifier):
    referral = emu.seed_referral()
    emu.deliver_with_corrupted_signature(referral["id"])
    headers, body = delivered(receiver, index=1)
    error = rejected(verifier, headers, body)
    assert error.status == 401
    signature = headers["authorization"].split(" ", 1)[1]
    assert signature not in str(error) and signature[:16] not in str(error)


def test_rejects_a_signature_that_is_not_base64(emu, receiver, verifier):
    headers, body = genuine(emu, receiver)
    assert rejected(verifier, {**headers, "authorization": "Signature %%%not-base64%%%"}, body).status == 401


def test_rejects_a_signature_made_by_a_self_signed_impostor(emu, receiver, verifier, fetch):
    referral = emu.seed_referral()
    emu.send_event(referral["id"], signer="rogue")
    headers, body = delivered(receiver, index=1)
    assert headers["x-ms-certificate-url"].startswith(f"{emu.url}/cert/")  # on the allowed prefix
    error = rejected(verifier, headers, body)
    assert error.status == 401 and "chain" in str(error)
    assert headers["x-ms-certificate-url"] in fetch.urls  # it was fetched, then refused


def test_rejects_a_chained_certificate_issued_to_another_name(emu, receiver, verifier):
    referral = emu.seed_referral()
    emu.send_event(referral["id"], signer="wrong-subject")
    headers, body = delivered(receiver, index=1)
    error = rejected(verifier, headers, body)
    assert error.status == 401 and "pcnotifications-dispatch.microsoft.com" in str(error)


def test_rejects_an_issuer_outside_the_expected_organisation(emu, receiver, ca_bundle):
    headers, body = genuine(emu, receiver)
    strict = WebhookVerifier(
        VerifierConfig([f"{emu.url}/cert/"], ca_bundle, issuer_org="Contoso Root Authority"), http_get=RecordingGet()
    )
    error = rejected(strict, headers, body)
    assert error.status == 401 and "Contoso Root Authority" in str(error)


def test_system_roots_do_not_trust_the_emulator_ca(emu, receiver):
    headers, body = genuine(emu, receiver)
    error = rejected(
        WebhookVerifier(VerifierConfig([f"{emu.url}/cert/"], None), http_get=RecordingGet()), headers, body
    )
    assert error.status == 401 and "chain" in str(error)


# -- certificate URL allow-list ------------------------------------------------------------------------------------
def test_certificate_url_outside_the_prefixes_is_never_fetched(emu, receiver, verifier, fetch):
    referral = emu.seed_referral()
    # The emulator really serves this certificate, so only the allow-list can stop it.
    elsewhere = f"{emu.url}/pki/intermediate-ca.cer"
    emu.deliver_with_certificate_url(referral["id"], elsewhere)
    headers, body = delivered(receiver, index=1)
    error = rejected(verifier, headers, body)
    assert error.status == 401 and "allowed" in str(error)
    assert fetch.urls == []


@pytest.mark.parametrize(
    "url",
    [
        "https://allowed.host.evil.com/cert/pcnotifications-dispatch.microsoft.com.cer",
        "https://allowed.host@evil.com/cert/pcnotifications-dispatch.microsoft.com.cer",
        "https://evil.com/allowed.host/cert/pcnotifications-dispatch.microsoft.com.cer",
        "http://allowed.host/cert/pcnotifications-dispatch.microsoft.com.cer",
        "https://allowed.host:8443/cert/pcnotifications-dispatch.microsoft.com.cer",
        "https://allowed.host/certificates/pcnotifications-dispatch.microsoft.com.cer",
        "https://allowed.host/cert/../private/key.cer",
        "https://allowed.host/cert/%2e%2e/private/key.cer",
        "https://allowed.host/cert/x.cer#fragment",
        "ftp://allowed.host/cert/x.cer",
        "https://allowed.host/cert/x .cer",
    ],
)
def test_prefix_tricks_are_refused_without_a_request(ca_bundle, url):
    fetch = RecordingGet()
    verifier = WebhookVerifier(VerifierConfig(["https://allowed.host/cert"], ca_bundle), http_get=fetch)
    assert not verifier.is_allowed_certificate_url(url)
    headers = {
        "Authorization": "Signature " + base64.b64encode(b"x" * 256).decode(),
        "X-MS-Signature-Algorithm": "rsa-sha256",
        "X-MS-Certificate-Url": url,
    }
    assert rejected(verifier, headers, b"{}").status == 401
    assert fetch.urls == []


def test_allowed_prefix_matches_scheme_host_and_path():
    verifier = WebhookVerifier(VerifierConfig(["https://Allowed.Host/cert/"], None))
    assert verifier.is_allowed_certificate_url("https://allowed.host/cert/pcnotifications-dispatch.microsoft.com.cer")
    assert verifier.is_allowed_certificate_url("HTTPS://ALLOWED.HOST:443/cert/x.cer")
    assert not verifier.is_allowed_certificate_url("https://allowed.host/other/x.cer")


# -- missing or unsupported headers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dropped", ["authorization", "x-ms-certificate-url", "x-ms-signature-algorithm"])
def test_missing_headers_are_unauthorised(emu, receiver, verifier, fetch, dropped):
    headers, body = genuine(emu, receiver)
    headers.pop(dropped)
    assert rejected(verifier, headers, body).status == 401
    assert fetch.urls == []


def test_a_bearer_authorization_is_not_a_signature(emu, receiver, verifier):
    headers, body = genuine(emu, receiver)
    assert rejected(verifier, {**headers, "authorization": "Bearer abc"}, body).status == 401


def test_an_unsupported_algorithm_is_a_bad_request(emu, receiver, verifier, fetch):
    headers, body = genuine(emu, receiver)
    assert rejected(verifier, {**headers, "x-ms-signature-algorithm": "rsa-sha1"}, body).status == 400
    assert fetch.urls == []


def test_configuration_errors_are_reported_at_construction(tmp_path):
    with pytest.raises(ValueError):
        WebhookVerifier(VerifierConfig([], None))
    with pytest.raises(ValueError):
        WebhookVerifier(VerifierConfig(["https://allowed.host/cert/"], tmp_path / "missing.pem"))


# -- certificate URL spelling, refusal cache, one download at a time ------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://allowed.host/cert/x.cer?cache-buster=1",
        "https://allowed.host/cert/x.cer?",
        "https://allowed.host/cert/x.cer#",
        "https://@allowed.host/cert/x.cer",
        "https://user:secret@allowed.host/cert/x.cer",
        "https://allowed.host:444/cert/x.cer",
    ],
)
def test_queries_fragments_user_names_and_other_ports_are_refused_without_a_request(ca_bundle, url):
    fetch = RecordingGet()
    verifier = WebhookVerifier(VerifierConfig(["https://allowed.host/cert/"], ca_bundle), http_get=fetch)
    headers = {
        "Authorization": "Signature " + base64.b64encode(b"x" * 256).decode(),
        "X-MS-Signature-Algorithm": "rsa-sha256",
        "X-MS-Certificate-Url": url,
    }
    assert not verifier.is_allowed_certificate_url(url)
    assert rejected(verifier, headers, b"{}").status == 401
    assert fetch.urls == []


def test_a_query_cannot_force_a_download_of_an_allowed_certificate(emu, receiver, verifier, fetch):
    headers, body = genuine(emu, receiver)
    verifier.verify(headers, body)
    downloads = len(fetch.urls)
    for n in range(3):
        busted = {**headers, "x-ms-certificate-url": f"{emu.certificate_url()}?n={n}"}
        assert rejected(verifier, busted, body).status == 401
    assert len(fetch.urls) == downloads


def test_spellings_of_one_certificate_url_share_one_download(emu, receiver, verifier, fetch):
    headers, body = genuine(emu, receiver)
    verifier.verify(headers, body)
    shouted = emu.certificate_url().replace("http://", "HTTP://", 1)
    verifier.verify({**headers, "x-ms-certificate-url": shouted}, body)
    assert fetch.urls.count(emu.certificate_url()) == 1
    assert all(url.startswith("http://") for url in fetch.urls)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_certificate_is_not_downloaded_again_for_a_minute(emu, receiver, ca_bundle, fetch):
    clock = Clock()
    verifier = WebhookVerifier(VerifierConfig([f"{emu.url}/cert/"], ca_bundle), http_get=fetch, clock=clock)
    headers, body = genuine(emu, receiver)
    missing = {**headers, "x-ms-certificate-url": f"{emu.url}/cert/gone.cer"}
    for _ in range(5):
        error = rejected(verifier, missing, body)
        assert error.status == 401 and "could not be downloaded" in str(error)
    assert fetch.urls == [f"{emu.url}/cert/gone.cer"]
    clock.now += 61
    rejected(verifier, missing, body)
    assert fetch.urls == [f"{emu.url}/cert/gone.cer"] * 2


def test_a_certificate_that_fails_verification_is_refused_from_the_cache(emu, receiver, verifier, fetch):
    referral = emu.seed_referral()
    emu.send_event(referral["id"], signer="rogue")
    headers, body = delivered(receiver, index=1)
    first = rejected(verifier, headers, body)
    downloads = len(fetch.urls)
    again = rejected(verifier, headers, body)
    assert (again.status, str(again)) == (first.status, str(first))
    assert len(fetch.urls) == downloads


def test_refused_urls_do_not_push_out_a_verified_certificate(emu, receiver, ca_bundle, fetch):
    verifier = WebhookVerifier(
        VerifierConfig([f"{emu.url}/cert/"], ca_bundle), http_get=fetch, max_cached=2, max_failures_cached=4
    )
    headers, body = genuine(emu, receiver)
    verifier.verify(headers, body)
    for n in range(20):
        rejected(verifier, {**headers, "x-ms-certificate-url": f"{emu.url}/cert/missing-{n}.cer"}, body)
    verifier.verify(headers, body)
    assert fetch.urls.count(emu.certificate_url()) == 1


class SlowGet(RecordingGet):
    """A downloader that takes a while, so that concurrent callbacks overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def __call__(self, url: str) -> bytes:
        time.sleep(0.2)
        with self.lock:
            return super().__call__(url)


@pytest.mark.parametrize("genuine_url", [True, False], ids=["genuine", "missing"])
def test_concurrent_callbacks_wait_for_one_download(emu, receiver, ca_bundle, genuine_url):
    slow = SlowGet()
    verifier = WebhookVerifier(VerifierConfig([f"{emu.url}/cert/"], ca_bundle), http_get=slow)
    headers, body = genuine(emu, receiver)
    if not genuine_url:
        headers = {**headers, "x-ms-certificate-url": f"{emu.url}/cert/gone.cer"}
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def deliver() -> None:
        start.wait()
        try:
            verifier.verify(headers, body)
            outcomes.append("accepted")
        except WebhookRejected:
            outcomes.append("rejected")

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert outcomes == ["accepted" if genuine_url else "rejected"] * 8
    assert slow.urls.count(headers["x-ms-certificate-url"]) == 1
