"""Messages that worker threads post to the app (they never touch widgets themselves)."""

from __future__ import annotations

from textual.message import Message

from grokwatch.ui.views import CheckpointDetail, Snapshot


class StoreChanged(Message):
    """The poller read a new snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class PollFailed(Message):
    """Reading the store raised; the poller keeps going."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class DetailLoaded(Message):
    """A checkpoint's detail was read."""

    def __init__(self, checkpoint_id: int, detail: CheckpointDetail | None) -> None:
        super().__init__()
        self.checkpoint_id = checkpoint_id
        self.detail = detail
