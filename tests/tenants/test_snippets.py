"""The example requests on "Get started" and on the key-created page run when pasted: each snippet, as the
browser shows it (HTML entities decoded), parses in its language (bash -n, Python's compiler, node --check), and
the curl one sends the JSON body byte for byte, quotes included. The browser test that copies and runs them
against a live portal is tests/e2e/test_first_request.py."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.django_db

SNIPPET = re.compile(r'<pre id="[^"]+" data-snippet="(curl|python|node)">(.*?)</pre>', re.S)


def snippets(content: str) -> dict[str, str]:
    found = {lang: html.unescape(text) for lang, text in SNIPPET.findall(content)}
    assert set(found) == {"curl", "python", "node"}, found.keys()
    return found


def check_parses(found: dict[str, str], tmp_path) -> None:
    result = subprocess.run(["bash", "-n"], input=found["curl"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    compile(found["python"], "example.py", "exec")
    node = shutil.which("node")
    assert node, "node is needed to check the Node example (apt-get install nodejs)"
    script = tmp_path / "example.mjs"
    script.write_text(found["node"])
    result = subprocess.run([node, "--check", str(script)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr


def curl_body(curl: str) -> dict:
    """What the heredoc hands curl on standard input, as bash reads it (a stand-in ``curl`` prints it)."""
    script = "curl() { cat; }\n" + curl
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10,
                            env={"PATH": "/usr/bin:/bin", "WATTLE_API_KEY": "wtl_test"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_get_started_snippets_parse_and_send_gday_intact(owner_client, acme, tmp_path):
    response = owner_client.get(f"/t/{acme.slug}/welcome/")
    assert response.status_code == 200
    found = snippets(response.content.decode())
    check_parses(found, tmp_path)
    assert "$WATTLE_API_KEY" in found["curl"]
    assert 'os.environ["WATTLE_API_KEY"]' in found["python"]
    assert "process.env.WATTLE_API_KEY" in found["node"]
    assert "http://testserver/v1/chat/completions" in found["curl"]
    body = curl_body(found["curl"])
    assert body["messages"] == [{"role": "user", "content": "G'day"}]


def test_key_created_snippets_carry_the_new_secret_and_parse(owner_client, acme, tmp_path):
    response = owner_client.post(f"/t/{acme.slug}/keys/new/", {"name": "IVR", "scopes": ["inference"]})
    assert response.status_code == 201
    secret = response.context["secret"]
    found = snippets(response.content.decode())
    check_parses(found, tmp_path)
    assert f'Bearer {secret}"' in found["curl"]
    assert f'api_key="{secret}"' in found["python"]
    assert f'apiKey: "{secret}"' in found["node"]
    assert curl_body(found["curl"])["messages"][0]["content"] == "G'day"


def test_get_started_links_the_playground_for_those_who_may_use_it(owner_client, acme, client, member_of):
    from tenants.models import Role
    from tests.conftest import sign_in

    response = owner_client.get(f"/t/{acme.slug}/welcome/")
    assert f'href="/t/{acme.slug}/playground/"' in response.content.decode()
    billing = sign_in(client, member_of(acme, Role.BILLING))
    content = billing.get(f"/t/{acme.slug}/welcome/").content.decode()
    assert "/playground/" not in content
    assert "The playground is open to agents, developers, admins and owners" in content


def test_get_started_needs_sign_in_and_membership(client, acme, bob, bluegum):
    from tests.conftest import sign_in

    response = client.get(f"/t/{acme.slug}/welcome/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert sign_in(client, bob).get(f"/t/{acme.slug}/welcome/").status_code == 404
