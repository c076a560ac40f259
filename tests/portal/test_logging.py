"""R-REG-3: nothing with end-customer content goes to logs. The configured log handler drops request bodies from
every record: the request object Django's request loggers attach, and a body passed as `extra`."""

from __future__ import annotations

import io
import json
import logging

import pytest
from django.test import RequestFactory

from portal.logging import DropRequestBodies

SECRET = "my TFN is 123 456 782 and my card 4111 1111 1111 1111"


@pytest.fixture
def console_lines():
    """What the configured console handler writes, one JSON object per line."""
    handler = next(h for h in logging.getLogger().handlers
                   if any(isinstance(f, DropRequestBodies) for f in h.filters))
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        handler.setStream(previous)


def test_the_console_handler_drops_the_body_of_the_request_django_attaches(console_lines):
    request = RequestFactory().post("/v1/chat/completions?x=1", data=json.dumps({"content": SECRET}),
                                    content_type="application/json")
    logging.getLogger("django.request").error("Internal Server Error: %s", request.path,
                                              extra={"status_code": 500, "request": request})
    [line] = console_lines()
    assert line["request"] == "POST /v1/chat/completions" and line["status_code"] == 500
    assert "123 456 782" not in json.dumps(line) and "4111" not in json.dumps(line)


@pytest.mark.parametrize("name", ["body", "request_body", "payload", "data"])
def test_a_body_passed_as_extra_is_dropped_and_its_size_kept(console_lines, name):
    logging.getLogger("wattle.test").warning("upstream refused", extra={name: SECRET})
    [line] = console_lines()
    assert line[name] == f"<dropped: {len(SECRET)} characters>"
    assert line["message"] == "upstream refused" and SECRET not in json.dumps(line)


def test_a_structured_body_is_dropped_whole(console_lines):
    logging.getLogger("wattle.test").warning("bad reply", extra={"payload": {"messages": [SECRET]}})
    [line] = console_lines()
    assert line["payload"] == "<dropped>" and "123 456 782" not in json.dumps(line)


def test_a_record_without_a_body_is_kept_as_it_was(console_lines):
    logging.getLogger("wattle.test").warning("sealed %d entries", 3, extra={"request_id": "req_1"})
    [line] = console_lines()
    assert (line["message"], line["request_id"], line["level"]) == ("sealed 3 entries", "req_1", "WARNING")
