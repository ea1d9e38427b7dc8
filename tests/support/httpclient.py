"""HTTP requests to the app under test, straight to 127.0.0.1, never through a proxy.

The machines that run the suite may export http_proxy/HTTP_PROXY; urllib
would send requests for 127.0.0.1 there. Every request here goes through an
opener without proxies. An HTTP error status is an answer like any other
(the tests assert on 500 bodies), so it is returned, not raised; a refused or
cut connection raises OSError (``http.client.HTTPException`` for a reply cut
short). Standard library only, so that tests/support/heroku.py (also run as a
script) can use it; named so that it cannot shadow the standard ``http``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import Message
from typing import Any

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

JSON_HEADERS = {"Content-Type": "application/json"}


def request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, Any]:
    """One HTTP request; (status, body parsed as JSON when it says it is JSON, else text)."""
    sent = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _NO_PROXY.open(sent, timeout=timeout) as response:
            return response.status, parse_body(response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, parse_body(error.headers, error.read())


def get(url: str, timeout: float = 60) -> tuple[int, Any]:
    return request(url, "GET", timeout=timeout)


def post_json(url: str, obj: Any, timeout: float = 60) -> tuple[int, Any]:
    return request(url, "POST", json.dumps(obj).encode(), JSON_HEADERS, timeout=timeout)


def parse_body(headers: Message, raw: bytes) -> Any:
    """JSON when the Content-Type says JSON and it parses; otherwise the text.

    A body that claims JSON but does not parse (a proxy's or a crashed
    worker's page) is returned as text, so the assertion shows it.
    """
    text = raw.decode(errors="replace")
    if "json" in (headers.get("Content-Type") or ""):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


class HttpMethods:
    """``request``/``get``/``post_json`` against ``self.base_url``, for servers under test.

    A class that serves HTTP (AppServer, the emulator's Dyno) inherits these
    and overrides ``base_url`` (a property: the port may be known only once started).
    """

    @property
    def base_url(self) -> str:
        """``http://host:port`` with no slash at the end."""
        raise NotImplementedError

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> tuple[int, Any]:
        """One HTTP request to ``path``; (status, JSON or text), see the module's docstring."""
        return request(self.base_url + path, method, body, headers, timeout)

    def get(self, path: str, timeout: float = 60) -> tuple[int, Any]:
        return get(self.base_url + path, timeout)

    def post_json(self, path: str, obj: Any, timeout: float = 60) -> tuple[int, Any]:
        return post_json(self.base_url + path, obj, timeout)

    def answers(self, path: str = "/health/", timeout: float = 2) -> bool:
        """Whether ``path`` answers 200 now (False if nothing listens yet): for readiness polls."""
        try:
            return self.get(path, timeout=timeout)[0] == 200
        except OSError:  # urllib.error.URLError is one
            return False
