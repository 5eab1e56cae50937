"""What tests of a running gateway share: every route of its index called once, as an HTTP client would."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from libs.http.transcoding import parse_template


def check_every_route_reaches_its_method(index_url: str, url_of: Callable[[str], str] | None = None) -> None:
    """Calls each route the gateway's index (at `index_url`) lists, at `url_of(its example path)` (by
    default, on the index's server), with an empty request: the service itself answers (a result, or its
    own refusal of the empty request as a google.rpc.Status), never the gateway's 403 of a refused caller
    or a 5xx of an unreachable one. So each method is reached through mTLS and the callee's authorisation."""
    with urllib.request.urlopen(index_url, timeout=10) as response:
        routes = json.load(response)["routes"]
    assert routes, "the gateway serves no route"
    for route in routes:
        body = b"{}" if route["method"] != "GET" else None
        example = parse_template(route["path"]).example()
        url = url_of(example) if url_of else urllib.parse.urljoin(index_url, example)
        request = urllib.request.Request(url, data=body, method=route["method"])
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as refused:
            status, answer = refused.code, refused.read()
            assert json.loads(answer)["code"] == 3, (route, answer)  # INVALID_ARGUMENT, from the service
        assert status in (200, 400), (route, url, status, answer)
