"""The metrics engine: checkpoint directory + probe -> CheckpointMetrics.

`compute_metrics` is the public one-call API (notebooks, benchmarks). `Engine` is the same
thing kept alive between checkpoints: it keeps the model skeleton while the architecture stays
the same and streams only the new weights in, and it splits the GPU/CPU-bound forward pass from
the CPU-bound distances so the worker can overlap them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokwatch import METRIC_DEFINITION
from grokwatch.encoding import EncodedProbe, encode_probe
from grokwatch.loading import (
    LoadedModel,
    checkpoint_signature,
    load_model,
    model_summary,
    peak_memory_bytes,
    reset_peak_memory,
)
from grokwatch.metrics import compute_checkpoint_metrics
from grokwatch.probe import Probe
from grokwatch.results import CheckpointMetrics, RoutingOutput
from grokwatch.routing import run_forward
from grokwatch.weightswap import reload_weights


@dataclass
class ForwardResult:
    """The torch half of one checkpoint's evaluation, as numpy arrays plus its costs."""

    routing: RoutingOutput
    encoded: EncodedProbe
    timings_s: dict[str, float]
    peak_mem_bytes: int
    model_summary: dict[str, Any]
    reloaded_in_place: bool
    extra: dict[str, Any] = field(default_factory=dict)


class Engine:
    """Evaluates checkpoints of one run with one probe, reusing the loaded model."""

    def __init__(
        self,
        probe: Probe,
        *,
        device: str = "auto",
        tau: float = 0.7,
        max_tokens: int = 2048,
        pair_bound: int = 512,
        batch_size: int = 16,
        trust_remote_code: bool = False,
        max_memory_bytes: int | None = None,
        workers: int = -1,
        reuse_model: bool = True,
        tokenizer_dir: str | Path | None = None,
    ) -> None:
        self.probe = probe
        self.device = device
        self.tau = tau
        self.max_tokens = max_tokens
        self.pair_bound = pair_bound
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.max_memory_bytes = max_memory_bytes
        self.workers = workers
        self.reuse_model = reuse_model
        # Trainer checkpoints often carry no tokenizer: fall back to the run directory's.
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        self.loaded: LoadedModel | None = None
        self._encoded: EncodedProbe | None = None

    def _load(self, checkpoint_dir: Path) -> bool:
        """Load or reload weights; returns True when the weights were swapped in place."""
        signature = checkpoint_signature(checkpoint_dir)
        if self.reuse_model and self.loaded is not None and self.loaded.signature == signature:
            reload_weights(self.loaded, checkpoint_dir)
            return True
        self.loaded = None  # free the old model before loading a different one
        self.loaded = load_model(
            checkpoint_dir,
            device=self.device,
            trust_remote_code=self.trust_remote_code,
            max_memory_bytes=self.max_memory_bytes,
            tokenizer_dir=self.tokenizer_dir or checkpoint_dir.parent,
        )
        self._encoded = None
        return False

    def forward(self, checkpoint_dir: str | Path) -> ForwardResult:
        """Load the checkpoint and run the probe through it (loss + routing)."""
        checkpoint_dir = Path(checkpoint_dir)
        t0 = time.perf_counter()
        in_place = self._load(checkpoint_dir)
        assert self.loaded is not None
        reset_peak_memory(self.loaded.device)
        t1 = time.perf_counter()
        if self._encoded is None:
            context = getattr(self.loaded.model.config, "max_position_embeddings", None)
            self._encoded = encode_probe(
                self.loaded.tokenizer, self.probe, self.max_tokens, model_max_length=context
            )
        routing = run_forward(
            self.loaded.model, self._encoded, batch_size=self.batch_size, device=self.loaded.device
        )
        t2 = time.perf_counter()
        return ForwardResult(
            routing=routing,
            encoded=self._encoded,
            timings_s={"load_s": t1 - t0, "forward_s": t2 - t1},
            peak_mem_bytes=peak_memory_bytes(self.loaded.device),
            model_summary=model_summary(self.loaded.model),
            reloaded_in_place=in_place,
        )

    def metrics(self, result: ForwardResult) -> CheckpointMetrics:
        """Pathway strings, consistency and distances from a forward result (CPU only)."""
        t0 = time.perf_counter()
        kept = result.encoded.kept
        metrics = compute_checkpoint_metrics(
            result.routing,
            groups=[self.probe.samples[i].group for i in kept],
            sample_indices=kept,
            tau=self.tau,
            pair_bound=self.pair_bound,
            probe_hash=self.probe.hash,
            workers=self.workers,
            definition=METRIC_DEFINITION,
        )
        metrics.timings_s = {**result.timings_s, "distance_s": time.perf_counter() - t0}
        metrics.peak_mem_bytes = result.peak_mem_bytes
        metrics.model_summary = result.model_summary
        return metrics


def compute_metrics(
    checkpoint_dir: str | Path,
    probe: Probe,
    *,
    tau: float = 0.7,
    max_tokens: int = 2048,
    pair_bound: int = 512,
    batch_size: int = 16,
    device: str = "auto",
    trust_remote_code: bool = False,
) -> CheckpointMetrics:
    """Compute every per-sample and per-group value of method.md for one checkpoint."""
    engine = Engine(
        probe,
        device=device,
        tau=tau,
        max_tokens=max_tokens,
        pair_bound=pair_bound,
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
    )
    return engine.metrics(engine.forward(checkpoint_dir))
