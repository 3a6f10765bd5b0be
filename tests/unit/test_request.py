from __future__ import annotations

import numpy as np
import pytest

from router.protocol.request import check_content_type, parse_batch, parse_json, parse_single
from serve.errors import BadRequest, InvalidInput, UnsupportedMediaType, to_http

SHAPE = (50, 9)
GOOD = [[0.5] * 9 for _ in range(50)]


def test_good_single_and_batch() -> None:
    x = parse_single({"features": GOOD}, SHAPE)
    assert x.shape == (1, 50, 9) and x.dtype == np.float32
    b = parse_batch({"instances": [GOOD, GOOD]}, SHAPE, 8)
    assert b.shape == (2, 50, 9)


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"features": [[0.5] * 9] * 49}, "expected shape (50, 9), got (49, 9)"),
        ({"features": [[0.5] * 8] * 50}, "got (50, 8)"),
        ({"features": [["a"] * 9] * 50}, "must be numbers"),
        ({"features": [[True] * 9] * 50}, "must be numbers"),
        ({"features": [[0.5] * 9] * 49 + [[0.5] * 8]}, "ragged"),
        ({"features": [[1e39] * 9] * 50}, "finite"),
        ({"features": "x"}, "nested list"),
        ({"feature": GOOD}, "missing required key 'features'"),
        ({"features": GOOD, "extra": 1}, "unknown key"),
        ([GOOD], "JSON object"),
    ],
)
def test_single_rejections(body: object, needle: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_single(body, SHAPE)
    assert needle in info.value.message
    assert to_http(info.value)[0] == 422


def test_batch_rejections() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        parse_batch({"instances": []}, SHAPE, 8)
    with pytest.raises(InvalidInput, match="the most per request is 2"):
        parse_batch({"instances": [GOOD] * 3}, SHAPE, 2)
    with pytest.raises(InvalidInput, match=r"instances\[1\]"):
        parse_batch({"instances": [GOOD, [[0]]]}, SHAPE, 8)


@pytest.mark.parametrize(
    "raw", [b"", b"{", b'{"features": NaN}', b'{"features": Infinity}', b"[" * 5000 + b"]" * 5000]
)
def test_bad_json_is_400(raw: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_json(raw)
    assert to_http(info.value)[0] == 400


def test_huge_exponent_parses_then_fails_as_non_finite() -> None:
    try:
        data = parse_json(b'{"features": 1e309}')
    except BadRequest:
        return  # refusing at parse time is fine too
    with pytest.raises(InvalidInput):
        parse_single(data, SHAPE)


@pytest.mark.parametrize("ctype", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_content_type_415(ctype: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        check_content_type(ctype)


def test_json_content_types_accepted() -> None:
    check_content_type("application/json")
    check_content_type("Application/JSON; charset=utf-8")
    check_content_type("application/vnd.api+json")


def test_unknown_exception_maps_to_bare_500() -> None:
    status, body = to_http(RuntimeError("secret detail"))
    assert status == 500 and "secret" not in str(body)
