"""The flow editor in a real browser: drag, connect, undo, save, conflicts, problems, keyboard."""

from __future__ import annotations

import pytest

from flows.actions import current_graph
from tests.conftest import login
from tests.e2e.editor_helpers import (
    connect,
    drag_from_palette,
    edge_keys,
    local_chain,
    make_flow,
    node,
    node_ids,
    open_editor,
    wait_saved,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_editor_opens_and_a_click_loads_the_node_settings(asgi_server, page, team, alice):
    local_chain()
    flow = make_flow(team, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    assert node_ids(page) == ["condition_1", "http_request_1", "manual_1"]
    node(page, "http_request_1").click()
    assert page.get_by_label("URL").input_value() == "http://127.0.0.1:9/hook"
    assert page.console_errors == []
