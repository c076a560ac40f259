"""No backend may point at a link-local or cloud metadata address (169.254.0.0/16, fe80::/10, fd00:ec2::254),
however it is written: in the staff console (a form error, never a 500), in INFERENCE_BACKENDS, in the services
and in what is published to the data plane. Host names are looked up when a backend is saved."""

from __future__ import annotations

import dataclasses
import socket

import pytest
from django.core.exceptions import ImproperlyConfigured

from audit.models import AuditEntry
from core import contract
from core.redis import get_redis
from inference.models import Backend
from inference.services import backend_save, backends_publish, backends_seed_from_settings

pytestmark = pytest.mark.django_db

# What the console's URL field lets through; the old IPv4 notations below it never get past that field, but
# the C resolver (so aiohttp and urllib) connects to them, so the services and the setting refuse them too.
CONSOLE_URLS = [
    "http://169.254.169.254/",
    "http://169.254.170.2:80",  # ECS task metadata
    "http://[fd00:ec2::254]/",
    "http://[FD00:EC2:0:0:0:0:0:254]:80/",
    "http://[fe80::1]:8000",
    "http://[::ffff:169.254.169.254]/",
]
METADATA_URLS = [
    *CONSOLE_URLS,
    "http://2852039166/",  # 169.254.169.254 as one number
    "http://0xa9fea9fe/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    "http://169.254.169.254./",
    "http://%31%36%39.254.169.254/",
]


def _form(base_url: str, **extra) -> dict:
    return {"name": "meta-1", "base_url": base_url, "region": "ap-southeast-2", "weight": 100,
            "max_concurrency": 10, **extra}


def published() -> list[dict]:
    raw = get_redis().get(contract.backends_key())
    return [dataclasses.asdict(b) for b in contract.decode_backends(raw)] if raw else []


@pytest.fixture
def resolver(monkeypatch):
    """DNS at the network edge: names the test gives resolve to the addresses it gives; others don't."""
    answers: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            address = answers[host]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (address, port))]
        if host.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.mark.parametrize("url", CONSOLE_URLS)
def test_console_refuses_a_metadata_address_with_a_form_error(staff_client, url):
    response = staff_client.post("/staff/backends/", _form(url))
    assert response.status_code == 400
    assert "link-local or cloud metadata address; a backend can" in response.content.decode()
    assert not Backend.objects.exists()
    assert not AuditEntry.objects.filter(action="backend.create").exists()


def test_console_shows_the_metadata_message_for_the_plain_address(staff_client):
    response = staff_client.post("/staff/backends/", _form("http://169.254.169.254/"))
    assert "169.254.169.254 is a link-local or cloud metadata address" in response.content.decode()


def test_console_refuses_a_name_that_resolves_to_the_metadata_service(staff_client, resolver):
    resolver["metadata.replica.test"] = "169.254.169.254"
    resolver["metadata6.replica.test"] = "fd00:ec2::254"
    for url in ("http://metadata.replica.test:8000", "http://metadata6.replica.test"):
        response = staff_client.post("/staff/backends/", _form(url))
        assert response.status_code == 400
        assert "resolves to" in response.content.decode()
    assert not Backend.objects.exists()


def test_console_accepts_internal_addresses_and_names_that_dont_resolve_yet(
    staff_client, resolver, django_capture_on_commit_callbacks
):
    resolver["vllm.replica.test"] = "10.0.3.7"
    for n, url in enumerate(["http://10.0.0.5:8000", "http://vllm.replica.test:8000", "http://later.replica.test"]):
        with django_capture_on_commit_callbacks(execute=True):
            response = staff_client.post("/staff/backends/", _form(url, name=f"ok-{n}"))
        assert response.status_code == 302, response.content.decode()
    assert sorted(b["name"] for b in published()) == ["ok-0", "ok-1", "ok-2"]


def test_editing_a_backend_to_a_metadata_address_is_refused(staff_client):
    Backend.objects.create(name="syd-1", base_url="http://10.0.0.5:8000")
    response = staff_client.post("/staff/backends/syd-1/", {
        "base_url": "http://[fd00:ec2::254]:8000", "region": "ap-southeast-2", "weight": 100, "max_concurrency": 10,
        "enabled": "on",
    })
    assert response.status_code == 400
    assert "link-local or cloud metadata address" in response.content.decode()
    assert Backend.objects.get().base_url == "http://10.0.0.5:8000"


@pytest.mark.parametrize("url", [*METADATA_URLS, "http://metadata.replica.test"])
def test_the_save_service_refuses_it_in_any_notation(staff, resolver, url):
    resolver["metadata.replica.test"] = "169.254.169.254"
    with pytest.raises(ValueError, match="link-local or cloud metadata"):
        backend_save(backend=Backend(name="meta-1", base_url=url), actor=staff)
    assert not Backend.objects.exists()


def test_seeding_from_settings_refuses_a_name_that_resolves_there_and_seeds_nothing(settings, resolver):
    resolver["metadata.replica.test"] = "169.254.169.254"
    settings.INFERENCE_BACKENDS = [
        {"name": "fine", "url": "http://10.0.0.5:8000"},
        {"name": "meta", "url": "http://metadata.replica.test"},
    ]
    with pytest.raises(ValueError, match=r"resolves to 169\.254\.169\.254"):
        backends_seed_from_settings()
    assert not Backend.objects.exists()


def test_a_row_written_around_the_services_is_never_published():
    Backend.objects.create(name="fine", base_url="http://10.0.0.5:8000")
    Backend.objects.create(name="meta", base_url="http://169.254.169.254")
    assert [b.name for b in backends_publish()] == ["fine"]
    assert [b["name"] for b in published()] == ["fine"]


@pytest.mark.parametrize("url", METADATA_URLS)
def test_inference_backends_setting_refuses_metadata_literals(url):
    from portal.settings import _parse_backends

    with pytest.raises(ImproperlyConfigured, match="link-local or cloud metadata"):
        _parse_backends(f'[{{"name": "gpu1", "url": "{url}"}}]', "http://default")
