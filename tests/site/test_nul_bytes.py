"""A NUL byte in a URL is a 400 (counted), never a 500: PostgreSQL's text cannot hold it."""

from __future__ import annotations

import pytest

from kwala_site import counters
from tests.team_fixtures import token_for

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", ["/flows/ab%00cd/", "/flows/%00/edit/", "/runs/?flow=a%00b", "/templates/a%00/",
                                 "/?q=%00"])
def test_a_page_url_with_a_nul_byte_is_a_400(client, alice, url):
    client.force_login(alice)
    before = counters.read().get("nul_bytes_refused", 0)
    answer = client.get(url)
    assert answer.status_code == 400
    assert counters.read()["nul_bytes_refused"] == before + 1


@pytest.mark.parametrize("url", ["/api/v1/flows/ab%00cd", "/api/v1/runs?flow=a%00b"])
def test_an_api_url_with_a_nul_byte_is_a_400_in_the_api_s_error_shape(client, alice, url):
    answer = client.get(url, HTTP_AUTHORIZATION=f"Bearer {token_for(alice)}")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "bad_request"
