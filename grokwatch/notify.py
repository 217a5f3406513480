"""Alert channels: terminal escape codes, a shell command hook, and apprise (optional extra).

Every channel returns a DeliveryResult and never raises, so a failing channel cannot stop the
daemon. Errors are one line and never carry a URL or token: URLs are redacted to their scheme.
The TUI does toast, bell and escape codes; the daemon does the command hook and apprise, and
records each delivery in the store so a restart never re-sends.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grokwatch.alerts import AlertDraft

ENV_PREFIX = "GROKWATCH_ALERT_"
INSTALL_HINT = "apprise is not installed: pip install 'grokwatch[notify]'"
_TITLE_MAX_CHARS = 80
_BODY_MAX_CHARS = 400
_ERROR_MAX_CHARS = 200
# C0 controls, DEL and C1 controls: any of them could end or inject an escape sequence.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*)://[^\s'\"<>]+")


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one delivery on one channel; `error` is one line without URLs or tokens."""

    channel: str
    ok: bool
    error: str = ""


def redact_url(url: str) -> str:
    """Reduce a notification URL to its scheme ("discord://…"), the only part safe to show."""
    match = re.match(r"\s*([A-Za-z][A-Za-z0-9+.\-]*)://", url)
    return f"{match.group(1)}://…" if match else "<url>"


def redact(text: str) -> str:
    """Replace every URL in free text by its scheme (tokens live in the rest of the URL)."""
    return _URL.sub(lambda m: f"{m.group(1)}://…", text)


def _one_line(text: str, max_chars: int = _ERROR_MAX_CHARS) -> str:
    line = " ".join(_CONTROL.sub(" ", redact(text)).split())
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"


def sanitize(text: str, max_chars: int) -> str:
    """Drop control characters (ESC, BEL, C1...) and collapse whitespace, capped in length."""
    line = " ".join(_CONTROL.sub(" ", str(text)).split())
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"


def _field(alert: AlertDraft | Mapping[str, Any], name: str, default: Any = None) -> Any:
    if isinstance(alert, AlertDraft):
        return getattr(alert, name, default)
    keys = alert.keys()
    if name == "group" and "group" not in keys and "grp" in keys:
        name = "grp"  # the store's column name
    return alert[name] if name in keys else default


def alert_title_body(alert: AlertDraft | Mapping[str, Any]) -> tuple[str, str]:
    """A short title ("grokwatch: onset math") and the alert's message as the body."""
    kind = _field(alert, "kind", "alert")
    group = _field(alert, "group", "") or ""
    title = f"grokwatch: {kind} {group}".strip()
    return title, str(_field(alert, "message", "") or "")


def _tmux_wrap(sequence: str) -> str:
    # tmux passes a DCS "tmux;" payload to the outer terminal with each ESC doubled; the pane
    # needs `set -g allow-passthrough on` (tmux >= 3.3).
    return "\x1bPtmux;" + sequence.replace("\x1b", "\x1b\x1b") + "\x1b\\"


def osc_notification(
    title: str, body: str, tmux: bool = False, protocols: Sequence[str] = ("9", "777")
) -> str:
    """Desktop-notification escape sequences: OSC 9 (iTerm2, WezTerm, kitty, Windows Terminal)
    and OSC 777 (foot, Ghostty, rxvt), each wrapped for tmux passthrough when `tmux`.

    Control characters are removed from title and body so the text cannot end the sequence
    early or inject another one; ';' in the title becomes ',' since OSC 777 splits on it. A
    terminal that speaks both shows two notifications: pass protocols=("9",) or ("777",).
    """
    clean_title = sanitize(title, _TITLE_MAX_CHARS).replace(";", ",") or "grokwatch"
    clean_body = sanitize(body, _BODY_MAX_CHARS)
    sequences = []
    for protocol in protocols:
        if protocol == "9":
            text = f"{clean_title}: {clean_body}" if clean_body else clean_title
            sequences.append(f"\x1b]9;{text}\x07")
        elif protocol == "777":
            sequences.append(f"\x1b]777;notify;{clean_title};{clean_body}\x07")
        else:
            raise ValueError(f"unknown OSC notification protocol {protocol!r} (use '9' or '777')")
    return "".join(_tmux_wrap(s) if tmux else s for s in sequences)


def alert_env(alert: AlertDraft | Mapping[str, Any]) -> dict[str, str]:
    """The alert's fields as GROKWATCH_ALERT_* environment variables (all strings)."""
    evidence = _field(alert, "evidence", {}) or {}
    if not isinstance(evidence, str):
        evidence = json.dumps(evidence, sort_keys=True, default=str)
    step = _field(alert, "step")
    dedupe_key = _field(alert, "dedupe_key", "") or ""
    alert_id = _field(alert, "id")
    values = {
        "KIND": _field(alert, "kind", ""),
        "STEP": "" if step is None else str(step),
        "GROUP": _field(alert, "group", "") or "",
        "MESSAGE": _field(alert, "message", ""),
        "ID": str(alert_id) if alert_id is not None else dedupe_key,
        "KEY": dedupe_key,
        "EVIDENCE": evidence,
    }
    # Environment strings cannot hold NUL bytes.
    return {ENV_PREFIX + k: str(v).replace("\x00", "") for k, v in values.items()}


def run_command_hook(
    cmd: str, alert: AlertDraft | Mapping[str, Any], timeout_s: float = 30.0
) -> DeliveryResult:
    """Run `cmd` through the shell with the alert's fields in environment variables.

    GROKWATCH_ALERT_KIND, _STEP (empty for run-wide alerts), _GROUP, _MESSAGE, _ID (the store's
    id, else the dedupe key), _KEY (the dedupe key) and _EVIDENCE (JSON).

    The fields are never pasted into the command string, so a message holding `$(...)` is data,
    not code. stdin is closed and stdout discarded; a non-zero exit, a signal or the timeout
    (which kills the command's whole process group) is a failed result whose error is the last
    stderr line, redacted. The command string itself is never echoed (it may hold a token).
    """
    env = {**os.environ, **alert_env(alert)}
    try:
        process = subprocess.Popen(
            cmd,
            shell=True,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except (OSError, ValueError) as error:
        return DeliveryResult("command", False, _one_line(f"could not start: {error}"))
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return DeliveryResult("command", False, f"timed out after {timeout_s:g} s and was killed")
    if process.returncode == 0:
        return DeliveryResult("command", True, "")
    lines = [s for s in stderr.decode("utf-8", "replace").splitlines() if s.strip()]
    last = f": {lines[-1]}" if lines else ""
    if process.returncode < 0:
        what = f"killed by signal {-process.returncode}"
    else:
        what = f"exited with status {process.returncode}"
    return DeliveryResult("command", False, _one_line(what + last))


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.communicate()


def send_apprise(urls: Sequence[str], alert: AlertDraft | Mapping[str, Any]) -> DeliveryResult:
    """Send the alert to chat/webhook services through apprise (`pip install grokwatch[notify]`).

    Missing apprise is a failed result with the install hint. URLs are never logged or
    returned: errors name only their schemes, and apprise's own logging is muted during the call.
    """
    try:
        import apprise
    except ImportError:
        return DeliveryResult("apprise", False, INSTALL_HINT)
    if not urls:
        return DeliveryResult("apprise", False, "no notification URLs configured")
    logger = logging.getLogger("apprise")
    was_disabled = logger.disabled
    logger.disabled = True  # apprise logs unparseable URLs verbatim
    try:
        notifier = apprise.Apprise()
        unusable = [redact_url(url) for url in urls if not notifier.add(url)]
        if len(notifier) == 0:
            return DeliveryResult(
                "apprise", False, f"no usable notification URL ({', '.join(unusable)})"
            )
        title, body = alert_title_body(alert)
        delivered = bool(notifier.notify(title=title, body=body))
    except Exception as error:  # a channel must never stop the daemon
        return DeliveryResult("apprise", False, _one_line(f"{type(error).__name__}: {error}"))
    finally:
        logger.disabled = was_disabled
    problems = []
    if not delivered:
        problems.append(f"delivery failed on at least one of {len(notifier)} services")
    if unusable:
        problems.append(f"unusable URL ({', '.join(unusable)})")
    return DeliveryResult("apprise", not problems, _one_line("; ".join(problems)))


class FailureLog:
    """Decides which delivery results to report, so a failing channel is reported once.

    should_report is True for the first failure of a channel and for its recovery, and False
    while it keeps failing or keeps working.
    """

    def __init__(self) -> None:
        self._failing: set[str] = set()

    def should_report(self, result: DeliveryResult) -> bool:
        """Whether this result changes the channel's health (first failure or recovery)."""
        if result.ok:
            if result.channel in self._failing:
                self._failing.discard(result.channel)
                return True
            return False
        if result.channel in self._failing:
            return False
        self._failing.add(result.channel)
        return True
