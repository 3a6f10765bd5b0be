"""`abserve report --html`: the link it prints opens /report, and nothing forges one."""

from __future__ import annotations

import argparse
import time

import pytest

from router.http.auth import AdminAuth, report_link
from serve.cli import admin as cli_admin
from serve.errors import Unauthorized

TOKEN = "report-link-token-0123456789abcdef"


def test_the_printed_link_opens_the_report_until_it_expires(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ABSERVE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setattr(cli_admin, "read_state", lambda: {"url": "http://10.0.0.7:8000/"})
    args = argparse.Namespace(html=True, valid=5.0, url=None, config=None, json=False)
    assert cli_admin.cmd_report(args) == 0
    out = capsys.readouterr()
    url = out.out.strip()
    assert url.startswith("http://10.0.0.7:8000/report?link=") and TOKEN not in url
    assert "5 min" in out.err
    link = url.split("link=", 1)[1]
    auth = AdminAuth(TOKEN.encode())
    auth.check_report(None, link)  # valid now
    auth.check_report(None, link, now=time.time() + 4 * 60)
    with pytest.raises(Unauthorized, match="expired"):
        auth.check_report(None, link, now=time.time() + 6 * 60)
    with pytest.raises(Unauthorized, match="not valid"):
        AdminAuth(b"some-other-token-0123456789").check_report(None, link)


def test_a_link_is_never_the_token_and_bad_links_are_refused() -> None:
    auth = AdminAuth(TOKEN.encode())
    for bad in ("", "abc", "123", "123.", ".abc", f"{int(time.time()) + 60}.deadbeef",
                report_link(TOKEN.encode(), 60).upper()):
        with pytest.raises(Unauthorized):
            auth.check_report(None, bad)
    auth.check_report(f"Bearer {TOKEN}", None)  # the header still works (curl, tools)
    with pytest.raises(Unauthorized):
        auth.check_report(None, None)
