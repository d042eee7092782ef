"""The access log: one line per request on stdout (JSON, or plain), written in batches."""

from __future__ import annotations

import json

import pytest

from monitoring.accesslog import BATCH_LINES, AccessLog

ME = "/api/v1/auth/me"


@pytest.mark.django_db
def test_every_request_writes_one_json_line_without_its_query_string(client, capsys):
    response = client.get("/health?token=secret-one-time-token", HTTP_USER_AGENT="probe/1")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"velro.access"' in line]
    assert len(lines) == 1
    line = lines[0]
    assert line["path"] == "/health" and "secret" not in json.dumps(line)
    assert line["status"] == 200 and line["method"] == "GET" and line["route"] == "/health"
    assert line["request_id"] == response["X-Request-ID"]
    assert line["user_agent"] == "probe/1" and line["bytes"] == len(response.content)
    assert line["duration_ms"] >= 0


@pytest.mark.django_db
def test_a_plain_log_format_gives_a_plain_access_line(client, capsys, settings):
    settings.LOG_FORMAT = "plain"
    response = client.get(ME)
    out = capsys.readouterr().out
    assert f'"GET {ME}" 401' in out and response["X-Request-ID"] in out


def test_lines_wait_for_the_flush_and_go_out_together(settings, capsys):
    settings.ACCESS_LOG_FLUSH_SECONDS = 60
    log = AccessLog()
    log._flusher.ensure_started = lambda: None  # flushed by hand here
    log.write("one")
    log.write("two")
    assert capsys.readouterr().out == ""
    log.flush()
    assert capsys.readouterr().out == "one\ntwo\n"


def test_a_full_batch_is_written_at_once(settings, capsys):
    settings.ACCESS_LOG_FLUSH_SECONDS = 60
    log = AccessLog()
    log._flusher.ensure_started = lambda: None
    for index in range(BATCH_LINES):
        log.write(f"line {index}")
    assert capsys.readouterr().out.count("\n") == BATCH_LINES


@pytest.mark.django_db
def test_the_access_log_can_be_turned_off(client, capsys, settings):
    settings.ACCESS_LOG = False
    client.get("/health")
    assert '"velro.access"' not in capsys.readouterr().out
