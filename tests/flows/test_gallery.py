from __future__ import annotations

import pytest
from django.urls import reverse

from flows import gallery
from flows.actions import do_publish_version
from flows.graph import compile_graph
from flows.models import Flow, Secret, SignerKey
from tests.team_fixtures import logged_in

CHAINS = {31337: "anvil-a", 31338: "anvil-b"}
ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
SAMPLES = {"address": ADDRESS, "email": "ops@example.com", "url": "https://hooks.example.com/x", "text": "abc123"}
REQUIRED_SUBJECTS = [
    "erc20-whale-slack", "nft-mint-discord", "governance-proposal-alert", "vote-digest", "lending-health-watcher",
    "cross-chain-mirror", "treasury-report", "webhook-relay", "block-heartbeat", "flow-failure-escalation",
    "treasury-deposit-slack", "failed-transaction-discord", "admin-function-email",
]


def form_values(template: gallery.Template) -> dict:
    values = {}
    for spec in template.inputs:
        if spec.kind == "chain":
            values[spec.name] = "31338" if spec.name == "target_chain" else "31337"
        elif spec.default is None:
            values[spec.name] = SAMPLES[spec.kind]
    return values


def secret_names(template: gallery.Template) -> set[str]:
    return {spec.default for spec in template.inputs if spec.kind == "secret"}


def test_the_gallery_has_every_required_template():
    slugs = [t.slug for t in gallery.templates()]
    assert set(REQUIRED_SUBJECTS) <= set(slugs) and len(slugs) >= 10
    for template in gallery.templates():
        assert template.title and template.description and template.category and template.inputs


@pytest.mark.parametrize("slug", REQUIRED_SUBJECTS)
def test_every_template_compiles_for_valid_inputs(slug):
    template = gallery.get_template(slug)
    values = gallery.clean_inputs(template, form_values(template), chains=CHAINS)
    dag = compile_graph(gallery.instantiate(template, values), chains=CHAINS, secret_names=secret_names(template))
    assert dag["steps"]
    assert "${" not in str(dag)


def test_typed_placeholders_keep_their_type():
    template = gallery.get_template("erc20-whale-slack")
    values = gallery.clean_inputs(template, {"chain": "31337", "token": ADDRESS.lower(), "threshold": "5"}, chains=CHAINS)
    graph = gallery.instantiate(template, values)
    trigger = graph["nodes"][0]["config"]
    assert trigger["chain"] == 31337 and trigger["addresses"] == [ADDRESS]
    assert trigger["condition"] == "trigger.args.value >= 5 * 10 ** 18"


def test_bad_inputs_are_reported_per_input():
    template = gallery.get_template("cross-chain-mirror")
    with pytest.raises(gallery.TemplateError) as info:
        gallery.clean_inputs(
            template, {"source_chain": "1", "token": "0x12", "target_chain": "abc", "signer": "bad name"}, chains=CHAINS
        )
    assert set(info.value.errors) == {"source_chain", "token", "target_chain", "receiver", "signer"}


def test_an_input_cannot_smuggle_an_expression_into_the_graph():
    template = gallery.get_template("governance-proposal-alert")
    values = form_values(template) | {"chat_id": "{{ secrets.OTHER }}"}
    with pytest.raises(gallery.TemplateError) as info:
        gallery.clean_inputs(template, values, chains=CHAINS)
    assert "chat_id" in info.value.errors


def test_the_gallery_page_searches_and_filters_by_category(alice):
    client = logged_in(alice)
    page = client.get(reverse("gallery"))
    assert page.status_code == 200 and page.content.count(b"<svg") >= 10
    found = [t.slug for t, _ in client.get(reverse("gallery"), {"q": "discord"}).context["templates"]]
    assert found == ["failed-transaction-discord", "nft-mint-discord"]
    found = [t.slug for t, _ in client.get(reverse("gallery"), {"q": "discord mint"}).context["templates"]]
    assert found == ["nft-mint-discord"]
    governance = [t.slug for t, _ in client.get(reverse("gallery"), {"category": "Governance"}).context["templates"]]
    assert set(governance) == {"governance-proposal-alert", "vote-digest"}
    fragment = client.get(reverse("gallery"), {"q": "heartbeat"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="gallery-results")
    assert b"<html" not in fragment.content and b"New-block heartbeat" in fragment.content


@pytest.mark.parametrize("slug", REQUIRED_SUBJECTS)
def test_every_template_becomes_a_draft_that_publishes(slug, alice, team, chains):
    template = gallery.get_template(slug)
    for name in secret_names(template):
        secret = Secret(team=team, name=name)
        secret.set_value("https://hooks.example.com/secret")
        secret.save()
    for spec in template.inputs:
        if spec.kind == "signer":  # contract writes are signed by a team key of that name
            key = SignerKey(team=team, name=spec.default, created_by=alice)
            key.set_private_key("0x" + "11" * 32)
            key.save()
    client = logged_in(alice)
    response = client.post(reverse("use_template", args=[slug]), form_values(template) | {"flow_name": f"My {slug}"})
    assert response.status_code == 302, response.content[:2000]
    flow = Flow.objects.get(team=team, name=f"My {slug}")
    version = do_publish_version(flow, alice)
    assert version.status == "PUBLISHED" and version.dag["trigger"]["type"] == template.graph["nodes"][0]["type"]


def test_the_use_form_shows_errors_and_creates_nothing(alice, team, chains):
    response = logged_in(alice).post(reverse("use_template", args=["block-heartbeat"]), {"chain": "31337", "heartbeat_url": "ftp://x"})
    assert response.status_code == 400 and b"must start with http" in response.content
    assert not Flow.objects.exists()


def test_a_viewer_cannot_use_a_template(team, make_member, chains):
    viewer = logged_in(make_member("VIEWER"))
    response = viewer.post(reverse("use_template", args=["block-heartbeat"]),
                           {"chain": "31337", "heartbeat_url": "https://hc-ping.com/x"})
    assert response.status_code == 404 and not Flow.objects.exists()


def test_an_unknown_template_is_404(alice):
    assert logged_in(alice).get(reverse("use_template", args=["nope"])).status_code == 404


def test_each_card_says_what_the_template_needs(alice):
    page = logged_in(alice).get(reverse("gallery")).content.decode()
    assert "Needs: a chain, a secret<" in page  # the whale alert: a chain and the Slack webhook's secret
    assert "Needs: 2 chains, a signer key<" in page  # the cross-chain mirror
    assert gallery.get_template("block-heartbeat").needs == ["a chain"]
