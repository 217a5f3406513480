"""Alert channels: escape sequences byte for byte, a real shell hook, apprise's absence."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from grokwatch.alerts import AlertDraft
from grokwatch.notify import (
    INSTALL_HINT,
    DeliveryResult,
    FailureLog,
    alert_env,
    alert_title_body,
    osc_notification,
    redact,
    redact_url,
    run_command_hook,
    send_apprise,
)

ALERT = AlertDraft(
    kind="onset",
    step=1200,
    group="math",
    message="group math: grokking onset at step 1200",
    evidence={"fired": ["pathway_distance"], "window": 8},
    dedupe_key="onset:math:1200",
)


def test_osc_sequences_byte_exact() -> None:
    text = osc_notification("grokwatch: onset math", "loss flat; distance falling", tmux=False)
    assert text == (
        "\x1b]9;grokwatch: onset math: loss flat; distance falling\x07"
        "\x1b]777;notify;grokwatch: onset math;loss flat; distance falling\x07"
    )
    assert osc_notification("t", "b", protocols=("777",)) == "\x1b]777;notify;t;b\x07"
    assert osc_notification("t", "", protocols=("9",)) == "\x1b]9;t\x07"


def test_osc_sequences_wrapped_for_tmux() -> None:
    text = osc_notification("grokwatch", "onset", tmux=True)
    assert text == (
        "\x1bPtmux;\x1b\x1b]9;grokwatch: onset\x07\x1b\\"
        "\x1bPtmux;\x1b\x1b]777;notify;grokwatch;onset\x07\x1b\\"
    )


def test_osc_text_cannot_break_out_of_the_sequence() -> None:
    hostile_title = "a;b\x1b]0;pwned\x07"
    hostile_body = "line1\nline2\x1b\\\x9c\x07end"
    text = osc_notification(hostile_title, hostile_body, protocols=("777",))
    assert text == "\x1b]777;notify;a,b ]0,pwned;line1 line2 \\ end\x07"
    assert text.count("\x1b") == 1 and text.count("\x07") == 1
    wrapped = osc_notification(hostile_title, hostile_body, tmux=True, protocols=("9",))
    assert wrapped.startswith("\x1bPtmux;\x1b\x1b]9;") and wrapped.endswith("\x07\x1b\\")
    assert wrapped.count("\x1b") == 4  # DCS start, the doubled ESC, the final ST
    with pytest.raises(ValueError, match="protocol"):
        osc_notification("t", "b", protocols=("99",))


def test_command_hook_passes_fields_in_environment(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    script = (
        "import json, os, sys; json.dump({k: v for k, v in os.environ.items()"
        " if k.startswith('GROKWATCH_ALERT_')}, open(sys.argv[1], 'w'))"
    )
    cmd = f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} {shlex.quote(str(out))}"
    result = run_command_hook(cmd, ALERT)
    assert result == DeliveryResult("command", True, "")
    seen = json.loads(out.read_text())
    assert seen["GROKWATCH_ALERT_KIND"] == "onset"
    assert seen["GROKWATCH_ALERT_STEP"] == "1200"
    assert seen["GROKWATCH_ALERT_GROUP"] == "math"
    assert seen["GROKWATCH_ALERT_MESSAGE"] == ALERT.message
    assert seen["GROKWATCH_ALERT_ID"] == "onset:math:1200"
    assert json.loads(seen["GROKWATCH_ALERT_EVIDENCE"]) == ALERT.evidence


def test_command_hook_never_executes_the_message(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    out = tmp_path / "message.txt"
    message = f"$(touch {marker}) `touch {marker}`; touch {marker} && echo '\"'"
    alert = {"kind": "onset", "step": None, "grp": "code", "message": message, "id": 42}
    cmd = f'printf "%s" "$GROKWATCH_ALERT_MESSAGE" > {shlex.quote(str(out))}'
    result = run_command_hook(cmd, alert)
    assert result.ok, result.error
    assert out.read_text() == message
    assert not marker.exists()
    env = alert_env(alert)
    assert env["GROKWATCH_ALERT_GROUP"] == "code" and env["GROKWATCH_ALERT_ID"] == "42"
    assert env["GROKWATCH_ALERT_STEP"] == ""


def test_failing_command_gives_one_redacted_line() -> None:
    cmd = (
        "echo 'first line' >&2;"
        " echo 'post to https://hooks.example.com/T0/B1/SECRET failed' >&2; exit 3"
    )
    result = run_command_hook(cmd, ALERT)
    assert not result.ok and result.channel == "command"
    assert result.error == "exited with status 3: post to https://… failed"
    assert "SECRET" not in result.error and "\n" not in result.error
    quiet = run_command_hook("exit 1", ALERT)
    assert quiet == DeliveryResult("command", False, "exited with status 1")


def test_hanging_command_is_killed_at_the_timeout(tmp_path: Path) -> None:
    result = run_command_hook("sleep 30 & wait", ALERT, timeout_s=0.5)
    assert not result.ok and "timed out after 0.5 s" in result.error


def test_apprise_missing_is_a_clear_failed_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "apprise", None)  # import apprise now raises ImportError
    result = send_apprise(["discord://webhook_id/SECRET_TOKEN"], ALERT)
    assert result == DeliveryResult("apprise", False, INSTALL_HINT)
    assert "pip install 'grokwatch[notify]'" in result.error


def test_redaction_keeps_only_the_scheme() -> None:
    assert redact_url("discord://id/TOKEN") == "discord://…"
    assert redact_url("not a url") == "<url>"
    assert redact("failed: tgram://bot/123 and https://x.y/z?k=SECRET.") == (
        "failed: tgram://… and https://…"
    )


def test_title_body_and_failure_log() -> None:
    assert alert_title_body(ALERT) == ("grokwatch: onset math", ALERT.message)
    assert alert_title_body({"kind": "overdue", "grp": "", "message": "m"}) == (
        "grokwatch: overdue",
        "m",
    )
    log = FailureLog()
    bad = DeliveryResult("command", False, "exited with status 1")
    good = DeliveryResult("command", True, "")
    assert [log.should_report(r) for r in (good, bad, bad, bad, good, good, bad)] == [
        False,
        True,
        False,
        False,
        True,
        False,
        True,
    ]
