"""A Dataverse @odata.nextLink is followed only back into the configured environment's Web API: the bearer
token goes with every page request, so a link to another scheme, host, port or path must not get it.

Two small HTTP servers on this machine stand in for Dataverse and for the host a rogue link points at;
each records the requests (and Authorization headers) it received."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.crm.dynamics.webapi import DataverseRows
from shared.domain.errors import PermanentError
from shared.httpclient import ApiClient

TOKEN = "dataverse-bearer-token"
API = "/api/data/v9.2"
SKIPTOKEN = "%3Ccookie%20pagenumber=%222%22%20pagingcookie=%22%253ccookie%253e%22%20/%3E"


class Recorder:
    """A local HTTP server answering GETs with a page from ``pages`` (by path), recording each request."""

    def __init__(self, pages: Callable[[str], dict] | None = None) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.pages = pages or (lambda path: {"value": []})
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.requests.append((self.path, self.headers.get("Authorization")))
                body = json.dumps(recorder.pages(self.path)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def foreign() -> Iterator[Recorder]:
    with Recorder() as server:
        yield server


def rows_from(server: Recorder) -> DataverseRows:
    api = ApiClient("Dynamics 365", f"http://127.0.0.1:{server.port}{API}", lambda: TOKEN, sleep=lambda s: None)
    return DataverseRows(api)


def first_page_linking_to(link: str) -> Callable[[str], dict]:
    def pages(path: str) -> dict:
        if "skiptoken" in path:
            return {"value": [{"name": "second page"}]}
        return {"value": [{"name": "first page"}], "@odata.nextLink": link}

    return pages


@pytest.mark.parametrize(
    "link",
    [
        "http://127.0.0.1:{foreign}" + API + "/opportunities?$skiptoken=1",  # another port
        "http://localhost:{dataverse}" + API + "/opportunities?$skiptoken=1",  # another host name
        "https://127.0.0.1:{dataverse}" + API + "/opportunities?$skiptoken=1",  # another scheme
        "http://127.0.0.1:{dataverse}/api/data/v9.1/opportunities?$skiptoken=1",  # outside the API path
        "http://127.0.0.1:{dataverse}" + API + "/../../other?$skiptoken=1",  # out by dot segments
        "http://user@127.0.0.1:{foreign}" + API + "/opportunities?$skiptoken=1",  # a user name in front
        "/relative" + API + "/opportunities?$skiptoken=1",
    ],
)
def test_a_next_link_elsewhere_is_refused_and_gets_no_token(foreign: Recorder, link: str) -> None:
    with Recorder() as dataverse:
        target = link.format(foreign=foreign.port, dataverse=dataverse.port)
        dataverse.pages = first_page_linking_to(target)
        seen = []
        with pytest.raises(PermanentError, match=r"nextLink points outside .* not followed") as raised:
            for row in rows_from(dataverse).rows("opportunities", {"$select": "name"}):
                seen.append(row["name"])
    assert seen == ["first page"]
    assert foreign.requests == []
    assert len(dataverse.requests) == 1, "the link was not followed on the Dataverse host either"
    assert TOKEN not in str(raised.value) and "skiptoken" not in str(raised.value)


def test_a_next_link_into_the_same_api_is_followed_exactly_as_given(foreign: Recorder) -> None:
    with Recorder() as dataverse:
        link = f"http://127.0.0.1:{dataverse.port}{API}/opportunities?$select=name&$skiptoken={SKIPTOKEN}"
        dataverse.pages = first_page_linking_to(link)
        names = [row["name"] for row in rows_from(dataverse).rows("opportunities", {"$select": "name"})]
    assert names == ["first page", "second page"]
    second_path, authorization = dataverse.requests[1]
    assert second_path == link.split(str(dataverse.port), 1)[1], "the skiptoken is sent byte for byte"
    assert authorization == f"Bearer {TOKEN}"
    assert foreign.requests == []
