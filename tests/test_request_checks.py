"""Issue 34: requests the service refuses with a message that says what is wrong (a body sent without the JSON
Content-Type, NaN, `"puzzle": null`, a /generate field that does not apply), and /docs served without a CDN."""

import re

import pytest
from live import PUZZLE, error_of
from pydantic import ValidationError

from server.schemas import build_requests
from server.settings import Settings

SOLVE = f'{{"puzzle": "{PUZZLE}", "search": {{"rollouts": 1, "steps": 1}}}}'


@pytest.mark.parametrize(
    "headers, named",
    [
        ({"content-type": "application/x-www-form-urlencoded"}, "Content-Type 'application/x-www-form-urlencoded'"),
        ({"content-type": "text/plain"}, "Content-Type 'text/plain'"),
        ({}, "no Content-Type header"),
    ],
)
def test_a_json_body_without_the_json_content_type_is_415_naming_the_header(client, headers, named):
    """`curl -d '{...}'` sends a form type: refused, naming the header to send (not "body: Input should be a valid
    dictionary"), on both POST routes."""
    for path, body in (("/solve", SOLVE), ("/generate", '{"count": 1}')):
        r = client.post(path, content=body, headers=headers)
        assert r.status_code == 415, (path, r.text)
        err = error_of(r)
        assert err["type"] == "unsupported_media_type" and "Content-Type: application/json" in err["message"]
        assert named in err["message"]
    r = client.post("/solve", content=SOLVE, headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    spec = client.get("/openapi.json").json()["paths"]
    assert "415" in spec["/solve"]["post"]["responses"] and "415" in spec["/generate"]["post"]["responses"]


def test_a_non_finite_number_is_422_saying_so(client):
    """Python's JSON parser reads NaN and Infinity; the message says the value is not finite, not that it is out of
    bounds."""
    json = {"content-type": "application/json"}
    for path, body, field in [
        ("/solve", f'{{"puzzle": "{PUZZLE}", "search": {{"noise": NaN}}}}', "search.noise"),
        ("/solve", f'{{"puzzle": "{PUZZLE}", "search": {{"threshold": -Infinity}}}}', "search.threshold"),
        ("/solve", f'{{"puzzle": "{PUZZLE}", "timeout_s": Infinity}}', "timeout_s"),
        ("/generate", '{"temperature": NaN}', "temperature"),
    ]:
        r = client.post(path, content=body, headers=json)
        message = error_of(r)["message"]
        assert r.status_code == 422 and message == f"{field}: Input should be a finite number", (body, message)


def test_a_null_puzzle_is_422_saying_it_must_not_be_null(client):
    r = client.post("/solve", json={"puzzle": None})
    assert r.status_code == 422 and error_of(r)["message"].startswith("puzzle: must not be null"), r.text
    r = client.post("/solve", json={"search": {}})  # left out: still "required"
    assert r.status_code == 422 and error_of(r)["message"] == "puzzle: Field required"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"kind": "grid", "clues": 30}, "`clues` applies to kind 'puzzle' only, not 'grid'"),
        ({"clues": 30}, "`clues` applies to kind 'puzzle' only"),  # kind defaults to grid
        ({"kind": "grid", "minimal": False}, "`minimal` applies to kind 'puzzle' only"),
        ({"kind": "grid", "minimal": True, "difficulty": "any"}, "`minimal` and `difficulty` apply to kind 'puzzle'"),
        ({"kind": "puzzle", "minimal": True, "clues": 30}, "`clues` does not apply to minimal puzzles"),
    ],
)
def test_generate_refuses_a_field_that_does_not_apply(client, body, message):
    """Before issue 34, grids came back for `clues` and puzzles of any clue count for `minimal` with `clues`."""
    r = client.post("/generate", json={"count": 1, "seed": 1, **body})
    assert r.status_code == 422 and message in error_of(r)["message"], r.text


def test_generate_fields_that_apply_pass():
    Generate = build_requests(Settings()).Generate
    for body in [
        {"kind": "puzzle", "clues": 30},
        {"kind": "puzzle", "minimal": True},
        {"kind": "puzzle", "minimal": False, "clues": 30},
        {"kind": "puzzle", "difficulty": "hard", "clues": 30},
        {"kind": "grid", "temperature": 0.5},
    ]:
        Generate.model_validate(body)
    with pytest.raises(ValidationError, match="`clues` applies to kind 'puzzle' only"):
        Generate.model_validate({"kind": "grid", "clues": 30})


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_nothing_from_outside_the_service(client, page):
    """Swagger UI and ReDoc came from a CDN, blank offline: every script, style and icon the page names is a path on
    this service that answers 200, and so is the spec it loads."""
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text and "//" not in re.sub(r"<!--.*?-->", "", r.text)
    urls = re.findall(r'(?:src|href|spec-url)="([^"]+)"', r.text) + re.findall(r"url: '([^']+)'", r.text)
    assert "/openapi.json" in urls and any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content, url
