"""Fixtures shared by the daemon tests: checkpoint templates, a run directory, a probe file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import build_templates, save_tokenizer, write_probe


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three complete tiny checkpoints (different seeds) that the writers copy from."""
    return build_templates(tmp_path_factory.mktemp("templates"))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """An empty run directory with the tokenizer saved at its top, as training scripts do."""
    run = tmp_path / "run"
    run.mkdir()
    save_tokenizer(run)
    return run


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    """Eight probe samples in two groups, outside the run directory."""
    return write_probe(tmp_path / "probe.jsonl")


@pytest.fixture
def webhook():
    """A JSON webhook on loopback: yields (port, list of received payloads)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            received.append(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()
