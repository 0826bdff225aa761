"""`python -m shared login` on MSAL against the emulated identity platform over HTTPS: device code by default, the
browser flow (authorization code + PKCE, answered on http://localhost) with --browser or where Conditional Access
blocks device code, MFA required, and tokens never printed."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import webbrowser
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests

from emulators.identity import IdentityEmulator
from shared.__main__ import main

CLIENT = "00000000-0000-0000-0000-00000000c11e"
TENANT = "contoso-tenant"


@pytest.fixture
def identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEmulator]:
    emulator = IdentityEmulator(client_id=CLIENT).start()
    # The operator's machine trusts the emulator's CA as it would a corporate one; MSAL insists on https.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.write_ca_bundle(tmp_path / "identity-ca.pem")))
    monkeypatch.setenv("PARTNER_CENTER_AUTHORITY", emulator.url)
    monkeypatch.delenv("KEY_VAULT_URI", raising=False)
    yield emulator
    emulator.stop()


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = values.get("action", "")
        if tag == "input" and "name" in values:
            self.fields[values["name"]] = values.get("value", "")


class _TestBrowser(webbrowser.BaseBrowser):
    """A user at a browser: opens the sign-in page and lets it post the answer back to the app's localhost port."""

    def __init__(self, ca_bundle: str) -> None:
        super().__init__("cosell-test-browser")
        self.ca_bundle = ca_bundle
        self.opened: list[str] = []
        self.answers: list[int] = []

    def open(self, url: str, new: int = 0, autoraise: bool = True) -> bool:
        self.opened.append(url)
        threading.Thread(target=self._visit, args=(url,), daemon=True).start()
        return True

    def _visit(self, url: str) -> None:
        page = requests.get(url, verify=self.ca_bundle, timeout=10)
        form = _Form()
        form.feed(page.text)
        self.answers.append(requests.post(form.action, data=form.fields, timeout=10).status_code)


@pytest.fixture
def browser(identity: IdentityEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _TestBrowser:
    test_browser = _TestBrowser(str(tmp_path / "identity-ca.pem"))
    monkeypatch.setattr(webbrowser, "_browsers", {"cosell-test-browser": [None, test_browser]})
    monkeypatch.setattr(webbrowser, "_tryorder", ["cosell-test-browser"])
    monkeypatch.setenv("BROWSER", "cosell-test-browser")  # and MSAL does not pick Edge on its own
    return test_browser


def _claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def login(*extra: str, output: Path) -> int:
    return main(["login", "--tenant", TENANT, "--client-id", CLIENT, "--output", str(output), *extra])


def test_device_code_sign_in_stores_a_refresh_token_and_prints_none(identity, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    threading.Timer(0.3, identity.approve).start()
    target = tmp_path / "rt.txt"
    assert login(output=target) == 0
    token = target.read_text()
    assert token in identity.refresh_tokens
    assert identity.refresh_tokens[token] == ["pwd", "mfa"], "the stored token comes from an MFA sign-in"
    out, err = capsys.readouterr()
    assert "ABCD-EFGH" in out and "Signed in as referrals.admin@contoso.example" in out
    for secret in (token, *identity.refresh_tokens):
        assert secret not in out + err + caplog.text


def test_msal_discovers_the_tenant_and_asks_for_partner_center_with_offline_access(identity, tmp_path):
    threading.Timer(0.3, identity.approve).start()
    assert login(output=tmp_path / "rt.txt") == 0
    paths = [path for _, path in identity.request_log]
    assert f"/{TENANT}/v2.0/.well-known/openid-configuration" in paths
    assert not any("discovery/instance" in p for p in paths), "no instance discovery against Microsoft's list"
    assert f"/{TENANT}/oauth2/v2.0/devicecode" in paths


def test_device_code_blocked_by_conditional_access_names_the_browser_fallback(identity, tmp_path, capsys):
    identity.block_device_code = True
    threading.Timer(0.3, identity.approve).start()
    target = tmp_path / "rt.txt"
    assert login(output=target) == 1
    err = capsys.readouterr().err
    assert "Conditional Access" in err and "AADSTS53003" in err and "login --browser" in err
    assert not target.exists()


def test_browser_sign_in_with_pkce_answered_on_localhost(identity, browser, tmp_path, capsys):
    identity.block_device_code = True  # the reason to use it; the browser flow is not affected
    target = tmp_path / "rt.txt"
    assert login("--browser", output=target) == 0
    assert target.read_text() in identity.refresh_tokens
    (opened,) = browser.opened
    query = requests.utils.urlparse(opened).query
    assert "code_challenge_method=S256" in query and "redirect_uri=http%3A%2F%2Flocalhost%3A" in query
    assert browser.answers == [200]
    out = capsys.readouterr().out
    assert target.read_text() not in out and "Signed in" in out


def test_a_sign_in_without_mfa_is_refused_before_anything_is_stored(identity, tmp_path, capsys):
    identity.mfa = False
    threading.Timer(0.3, identity.approve).start()
    target = tmp_path / "rt.txt"
    assert login(output=target) == 1
    err = capsys.readouterr().err
    assert "multi-factor" in err and "MFA-capable account" in err
    assert not target.exists()


def test_unknown_application_is_refused_readably(identity, tmp_path, capsys):
    assert main(["login", "--tenant", TENANT, "--client-id", "someone-else", "--output", str(tmp_path / "x")]) == 1
    assert "unauthorized_client" in capsys.readouterr().err


# -- the emulator is as strict as Entra about PKCE ----------------------------------------------------------------
def _authorize(identity: IdentityEmulator, ca: str, **extra: str) -> requests.Response:
    params = {
        "client_id": CLIENT,
        "response_type": "code",
        "redirect_uri": "http://localhost:8400",
        "scope": "https://api.partner.microsoft.com/.default offline_access openid",
        "state": "s1",
        **extra,
    }
    return requests.get(
        f"{identity.url}/{TENANT}/oauth2/v2.0/authorize", params=params, verify=ca, allow_redirects=False, timeout=5
    )


def test_emulator_requires_pkce_and_checks_the_verifier(identity, tmp_path):
    ca = str(tmp_path / "identity-ca.pem")
    no_pkce = _authorize(identity, ca)
    assert no_pkce.status_code == 302 and "AADSTS9002325" in requests.utils.unquote(no_pkce.headers["Location"])
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    answer = _authorize(identity, ca, code_challenge=challenge, code_challenge_method="S256")
    code = requests.utils.urlparse(answer.headers["Location"]).query.split("code=")[1].split("&")[0]
    token_url = f"{identity.url}/{TENANT}/oauth2/v2.0/token"
    form = {"client_id": CLIENT, "grant_type": "authorization_code", "code": code}
    form["redirect_uri"] = "http://localhost:8400"
    wrong = requests.post(token_url, data={**form, "code_verifier": "x" * 50}, verify=ca, timeout=5)
    assert wrong.status_code == 400 and "AADSTS501481" in wrong.json()["error_description"]
    # The code was spent by that attempt, as at Entra: a second redemption fails even with the right verifier.
    again = requests.post(token_url, data={**form, "code_verifier": verifier}, verify=ca, timeout=5)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    fresh = _authorize(identity, ca, code_challenge=challenge, code_challenge_method="S256")
    form["code"] = requests.utils.urlparse(fresh.headers["Location"]).query.split("code=")[1].split("&")[0]
    ok = requests.post(token_url, data={**form, "code_verifier": verifier}, verify=ca, timeout=5)
    assert ok.status_code == 200
    assert "mfa" in _claims(ok.json()["access_token"])["amr"]
    assert _claims(ok.json()["access_token"])["aud"] == "https://api.partner.microsoft.com"


def test_emulator_serves_tls_only(identity):
    with pytest.raises(requests.ConnectionError):
        requests.get(identity.url.replace("https://", "http://") + f"/{TENANT}/v2.0/.well-known/openid-configuration")
