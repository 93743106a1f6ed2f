from __future__ import annotations

import copy
import json

from flows.editor.diff import diff_graphs, is_empty

OLD = {
    "nodes": [
        {"id": "t", "type": "manual", "name": "Start", "config": {}, "position": {"x": 0, "y": 0}},
        {"id": "post", "type": "http.request", "name": "Post", "position": {"x": 0, "y": 100},
         "config": {"url": "https://a.example", "headers": {"X-A": "1"}, "expected_status": [200]}},
        {"id": "wait", "type": "delay", "name": "Wait", "config": {"duration": 60}, "position": {"x": 0, "y": 200}},
    ],
    "edges": [
        {"id": "e1", "source": "t", "source_port": "out", "target": "post"},
        {"id": "e2", "source": "post", "source_port": "out", "target": "wait"},
    ],
}


def test_identical_graphs_have_an_empty_diff():
    diff = diff_graphs(OLD, copy.deepcopy(OLD))
    assert is_empty(diff)


def test_it_reports_added_removed_moved_renamed_and_changed_nodes():
    new = copy.deepcopy(OLD)
    post, wait = new["nodes"][1], new["nodes"][2]
    post["position"] = {"x": 40, "y": 100}
    post["name"] = "Post to API"
    post["config"]["url"] = "https://b.example"
    post["config"]["headers"]["X-B"] = "2"
    del post["config"]["expected_status"]
    new["nodes"].remove(wait)
    new["nodes"].append({"id": "slack", "type": "notify.slack", "name": "Slack", "config": {"text": "hi"}})
    new["edges"] = [
        {"id": "other-id", "source": "t", "source_port": "out", "target": "post"},
        {"source": "post", "source_port": "error", "target": "slack"},
    ]
    diff = diff_graphs(OLD, new)
    assert [n["id"] for n in diff["nodes"]["added"]] == ["slack"]
    assert [n["id"] for n in diff["nodes"]["removed"]] == ["wait"]
    assert diff["nodes"]["moved"] == [{"id": "post", "old": {"x": 0, "y": 100}, "new": {"x": 40, "y": 100}}]
    assert diff["nodes"]["renamed"] == [{"id": "post", "old": "Post", "new": "Post to API"}]
    assert diff["nodes"]["changed"] == [
        {
            "id": "post",
            "changes": [
                {"path": "config.url", "old": "https://a.example", "new": "https://b.example"},
                {"path": "config.headers.X-B", "old": None, "new": "2"},
                {"path": "config.expected_status", "old": [200], "new": None},
            ],
        }
    ]
    # the edge t->post kept its endpoints; only its id changed, so it is not in the diff
    assert diff["edges"] == {
        "added": [{"source": "post", "source_port": "error", "target": "slack"}],
        "removed": [{"source": "post", "source_port": "out", "target": "wait"}],
    }
    json.dumps(diff)


def test_a_move_alone_is_not_a_change():
    new = copy.deepcopy(OLD)
    new["nodes"][2]["position"] = {"x": 300, "y": 200}
    diff = diff_graphs(OLD, new)
    assert diff["nodes"]["moved"] == [{"id": "wait", "old": {"x": 0, "y": 200}, "new": {"x": 300, "y": 200}}]
    assert diff["nodes"]["changed"] == []
    assert not is_empty(diff)


def test_list_items_and_type_changes_are_reported_by_path():
    new = copy.deepcopy(OLD)
    new["nodes"][1]["config"]["expected_status"] = [201]
    new["nodes"][2]["type"] = "stop"
    new["nodes"][2]["config"] = {"duration": "60"}
    diff = diff_graphs(OLD, new)
    assert diff["nodes"]["changed"] == [
        {"id": "post", "changes": [{"path": "config.expected_status.0", "old": 200, "new": 201}]},
        {"id": "wait", "changes": [
            {"path": "type", "old": "delay", "new": "stop"},
            {"path": "config.duration", "old": 60, "new": "60"},
        ]},
    ]
