"""One forward pass over an encoded probe: per-sample loss and mean routing per MoE layer.

Routers are read with forward hooks (see adapters.py), so the pass is the model's ordinary forward
with no `output_router_logits`. Samples are batched longest first with right padding; a pad token
sits after every real token, so under the causal mask it changes nothing the real tokens see, and
the hooks leave pad positions out of the routing means.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from grokwatch.adapters import RouterSpec, find_routers
from grokwatch.encoding import EncodedProbe
from grokwatch.errors import ModelError
from grokwatch.results import RoutingOutput

__all__ = [
    "TokenRouting",
    "capture_token_routing",
    "find_routers",
    "input_device",
    "run_forward",
    "use_eager_experts",
]


def input_device(model: nn.Module) -> torch.device:
    """The device a model's inputs belong on: its input embeddings' (right for device_map)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    return next(model.parameters()).device


def use_eager_experts(model: nn.Module) -> bool:
    """Switch a model's experts to the eager loop (faster on CPU); False where unsupported."""
    config = getattr(model, "config", None)
    if not hasattr(model, "set_experts_implementation") or config is None:
        return False
    if getattr(config, "_experts_implementation", None) == "eager":
        return True
    can_set = getattr(type(model), "_can_set_experts_implementation", None)
    if can_set is None or not can_set():
        return False
    model.set_experts_implementation("eager")
    return getattr(config, "_experts_implementation", None) == "eager"


class _BatchCapture:
    """Forward hooks that turn each router's output into per-sample mean distributions [B, K]."""

    def __init__(self, routers: list[RouterSpec]) -> None:
        self.routers = routers
        self.mask: torch.Tensor | None = None  # [B, S] float32, 1 for real tokens
        self.means: list[torch.Tensor | None] = [None] * len(routers)

    def begin(self, attention_mask: torch.Tensor) -> None:
        self.mask = attention_mask.float()
        self.means = [None] * len(self.routers)

    def hook(self, layer: int) -> Any:
        spec = self.routers[layer]
        n_experts = spec.num_experts

        def on_forward(module: nn.Module, args: Any, output: Any) -> None:
            assert self.mask is not None, "begin() sets the mask before every forward"
            if self.means[layer] is not None:
                raise ModelError(f"{spec.name}: router ran twice in one forward pass")
            dist = spec.adapter.distribution(module, output)
            batch, seq = self.mask.shape
            if tuple(dist.shape) != (batch * seq, n_experts):
                raise ModelError(
                    f"{spec.name}: router scores have shape {tuple(dist.shape)}, expected "
                    f"({batch * seq}, {n_experts}); this architecture needs its own adapter "
                    "in grokwatch/adapters.py"
                )
            mask = self.mask.to(dist.device)
            summed = (dist.view(batch, seq, -1) * mask.unsqueeze(-1)).sum(dim=1)
            self.means[layer] = summed / mask.sum(dim=1, keepdim=True)

        return on_forward

    def end(self) -> list[torch.Tensor]:
        missing = [s.name for s, m in zip(self.routers, self.means, strict=True) if m is None]
        if missing:
            raise ModelError(f"{missing[0]}: router did not run in the forward pass")
        return [m for m in self.means if m is not None]


@contextmanager
def _hooked(routers: list[RouterSpec], make_hook: Any) -> Iterator[None]:
    handles = [s.module.register_forward_hook(make_hook(i)) for i, s in enumerate(routers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _pad_batch(
    encoded: EncodedProbe, rows: list[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(encoded.input_ids[r]) for r in rows)
    ids = torch.full((len(rows), width), encoded.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, r in enumerate(rows):
        n = len(encoded.input_ids[r])
        ids[b, :n] = torch.tensor(encoded.input_ids[r], dtype=torch.long)
        attention[b, :n] = 1
        targets[b, :n] = torch.tensor(encoded.loss_masks[r], dtype=torch.bool)
    return ids.to(device), attention.to(device), targets.to(device)


def _sample_losses(logits: torch.Tensor, ids: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Mean next-token NLL over each row's counted targets, in float32, one row at a time."""
    losses = []
    for b in range(ids.shape[0]):
        # Logit t predicts token t + 1; row by row keeps the float32 copy at [S, V], not [B, S, V].
        row_logits = logits[b, :-1].float()
        row_targets = ids[b, 1:].to(row_logits.device)
        counted = targets[b, 1:].to(row_logits.device)
        nll = torch.nn.functional.cross_entropy(row_logits, row_targets, reduction="none")
        losses.append(float(nll[counted].mean()) if bool(counted.any()) else float("nan"))
    return losses


def run_forward(
    model: nn.Module,
    encoded: EncodedProbe,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> RoutingOutput:
    """Run the probe through the model; return per-sample losses and mean routing per MoE layer.

    `device` is where the inputs go (default: the model's input-embedding device); the model is not
    moved. Results are in the order of `encoded.kept`, whatever the batching order.
    """
    if batch_size < 1:
        raise ModelError(f"batch size is {batch_size}; use --batch-size 1 or more")
    routers = find_routers(model)
    n_samples, n_layers, n_experts = encoded.n_kept, len(routers), routers[0].num_experts
    target = torch.device(device) if device is not None else input_device(model)
    losses = np.full(n_samples, np.nan, dtype=np.float64)
    n_tokens = np.array([len(ids) for ids in encoded.input_ids], dtype=np.int64)
    routing = np.zeros((n_samples, n_layers, n_experts), dtype=np.float64)
    # Longest first: a batch too big for memory fails on the first try, and padding stays small.
    order = sorted(range(n_samples), key=lambda i: -len(encoded.input_ids[i]))
    capture = _BatchCapture(routers)
    with _eval_mode(model), _hooked(routers, capture.hook), torch.inference_mode():
        for start in range(0, n_samples, batch_size):
            rows = order[start : start + batch_size]
            ids, attention, targets = _pad_batch(encoded, rows, target)
            capture.begin(attention)
            output = model(input_ids=ids, attention_mask=attention, use_cache=False)
            logits = getattr(output, "logits", None)
            if logits is None:
                raise ModelError(
                    f"{type(model).__name__} returns no logits; load it as a causal LM "
                    "(AutoModelForCausalLM)"
                )
            layer_means = capture.end()
            for layer, means in enumerate(layer_means):
                routing[rows, layer, :] = means.to("cpu", torch.float64).numpy()
            losses[rows] = _sample_losses(logits, ids, targets)
    # The float32 means sum to 1 within ~1e-7; renormalising in float64 keeps the
    # cumulative sums that the tau prefix compares free of that rounding.
    routing /= routing.sum(axis=-1, keepdims=True)
    return RoutingOutput(
        losses=losses,
        n_tokens=n_tokens,
        routing=routing,
        router_weights=[spec.weight_matrix() for spec in routers],
        layer_indices=[spec.layer_index for spec in routers],
        score_kind=routers[0].adapter.score_kind,
    )


@dataclass(frozen=True)
class TokenRouting:
    """One MoE layer's per-token view of one forward pass (for checks and debugging)."""

    name: str
    layer_index: int
    distribution: torch.Tensor  # [tokens, K] float32, the adapter's scores (rows sum to 1)
    chosen: torch.Tensor | None  # [tokens, k] expert ids the model picked, if the router says
    predicted: torch.Tensor | None  # [tokens, k] ids the adapter's scores select (k = len(chosen))


def capture_token_routing(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> list[TokenRouting]:
    """Run one batch and return, per MoE layer, every token's distribution and expert choices."""
    routers = find_routers(model)
    found: list[TokenRouting | None] = [None] * len(routers)

    def make_hook(layer: int) -> Any:
        spec = routers[layer]

        def on_forward(module: nn.Module, args: Any, output: Any) -> None:
            chosen = spec.adapter.chosen_experts(module, output)
            predicted = None
            if chosen is not None:
                predicted = spec.adapter.predicted_experts(module, output, chosen.shape[-1])
            found[layer] = TokenRouting(
                spec.name,
                spec.layer_index,
                spec.adapter.distribution(module, output).detach().cpu(),
                None if chosen is None else chosen.detach().cpu(),
                None if predicted is None else predicted.detach().cpu(),
            )

        return on_forward

    device = input_device(model)
    mask = attention_mask.to(device) if attention_mask is not None else None
    with _eval_mode(model), _hooked(routers, make_hook), torch.inference_mode():
        model(input_ids=input_ids.to(device), attention_mask=mask, use_cache=False)
    return [t for t in found if t is not None]
