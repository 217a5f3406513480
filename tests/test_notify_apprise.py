"""apprise delivers an alert to a real webhook (a JSON server on loopback), URL never leaked."""

from __future__ import annotations

import json

import pytest

from grokwatch.notify import send_apprise

pytest.importorskip("apprise")


ALERT = {
    "kind": "onset",
    "step": 750,
    "group": "sub",
    "message": "group sub: grokking onset at step 750",
    "evidence": {},
    "dedupe_key": "onset:sub:750",
}


def test_alert_reaches_a_json_webhook(webhook):
    port, received = webhook
    result = send_apprise([f"json://127.0.0.1:{port}/hook?token=s3cret"], ALERT)
    assert result.ok, result.error
    assert len(received) == 1
    payload = json.dumps(received[0])
    assert "grokking onset at step 750" in payload


def test_a_dead_webhook_fails_without_leaking_the_url():
    # Port 9 on loopback (discard) has no listener here: the delivery fails fast.
    result = send_apprise(["json://127.0.0.1:9/hook?token=s3cret"], ALERT)
    assert not result.ok
    assert "s3cret" not in result.error and "127.0.0.1" not in result.error
