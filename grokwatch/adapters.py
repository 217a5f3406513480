"""Per-architecture router adapters: where each MoE model keeps its routers and how to read them.

An adapter names the router modules (matched by class name and module path; the layer index comes
from the `layers.<i>.` part of the path), turns one router output into a per-token routing
distribution over all experts, and reads back the experts the model itself picked, so tests can
check the two agree. In transformers 5 the routers of most MoE models are `...TopKRouter` modules
returning `(router_logits, top_k_weights, top_k_index)`; a forward hook on them sees that tuple.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from grokwatch.errors import ModelError

logger = logging.getLogger(__name__)

SOFTMAX = "softmax"
SIGMOID_NORMALISED = "sigmoid-normalised"

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class RouterAdapter:
    """How to find and read the MLP routers of one architecture (softmax over router logits)."""

    arch: str  # transformers model_type, or "generic"
    classes: tuple[str, ...]  # router class names; empty = any class
    path_suffix: str  # module path inside a decoder layer, e.g. "mlp.gate"
    logits_index: int = 0  # position of the router logits in the router's output tuple
    chosen_index: int | None = 2  # position of the model's top-k expert ids, if returned
    weight_path: str = "weight"  # attribute path of the [K, hidden] router weight
    score_kind: str = SOFTMAX

    def matches(self, name: str, module: nn.Module) -> bool:
        """Whether a named module is one of this architecture's MLP routers."""
        if self.classes and type(module).__name__ not in self.classes:
            return False
        return name == self.path_suffix or name.endswith("." + self.path_suffix)

    def logits(self, output: Any) -> torch.Tensor:
        """The router logits [tokens, K] from a router module's output."""
        logits = output if isinstance(output, torch.Tensor) else output[self.logits_index]
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            # e.g. remote-code gates that return expert ids first: not something to softmax.
            raise ModelError(
                f"{self.arch} router: output {self.logits_index} is not a tensor of logits; "
                "this architecture needs its own adapter in grokwatch/adapters.py"
            )
        return logits

    def distribution(self, module: nn.Module, output: Any) -> torch.Tensor:
        """Per-token routing distribution [tokens, K], float32, over all experts (rows sum to 1)."""
        logits = self.logits(output)
        return torch.softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)

    def chosen_experts(self, module: nn.Module, output: Any) -> torch.Tensor | None:
        """The expert ids [tokens, k] the model itself picked, read from the router output."""
        if self.chosen_index is None or isinstance(output, torch.Tensor):
            return None
        chosen = output[self.chosen_index]
        return chosen.reshape(-1, chosen.shape[-1]).long()

    def predicted_experts(self, module: nn.Module, output: Any, top_k: int) -> torch.Tensor:
        """Top-k experts [tokens, k] by this adapter's scores, under the model's selection rule."""
        return torch.topk(self.distribution(module, output), top_k, dim=-1).indices

    def weight(self, module: nn.Module) -> torch.Tensor:
        """The router weight [K, hidden]: row k is expert k's embedding."""
        value: Any = module
        for part in self.weight_path.split("."):
            value = getattr(value, part)
        return value


@dataclass(frozen=True)
class SigmoidGroupAdapter(RouterAdapter):
    """DeepSeek-V3 style: sigmoid scores, a bias used only for selection, group-limited top-k.

    The distribution is the sigmoid scores normalised to sum to 1 per token (the bias is a
    load-balancing term, not a routing weight). Selection is reproduced exactly for the check.
    """

    score_kind: str = SIGMOID_NORMALISED

    def distribution(self, module: nn.Module, output: Any) -> torch.Tensor:
        """Sigmoid scores of all experts, normalised to sum to 1 per token, in float32."""
        scores = torch.sigmoid(self.logits(output).float())
        scores = scores.reshape(-1, scores.shape[-1])
        return scores / scores.sum(dim=-1, keepdim=True)

    def predicted_experts(self, module: nn.Module, output: Any, top_k: int) -> torch.Tensor:
        """Group-limited top-k over sigmoid scores plus the selection bias, as the router does."""
        scores = torch.sigmoid(self.logits(output).float())
        scores = scores.reshape(-1, scores.shape[-1])
        bias = getattr(module, "e_score_correction_bias", None)
        choice = scores if bias is None else scores + bias.float()
        n_group = int(getattr(module, "num_group", 1) or 1)
        topk_group = int(getattr(module, "topk_group", n_group) or n_group)
        if n_group > 1:
            tokens, n_experts = choice.shape
            grouped = choice.view(tokens, n_group, n_experts // n_group)
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
            keep = torch.zeros_like(group_scores, dtype=torch.bool)
            keep.scatter_(1, group_scores.topk(topk_group, dim=-1).indices, True)
            keep = keep.unsqueeze(-1).expand_as(grouped).reshape(tokens, n_experts)
            choice = choice.masked_fill(~keep, float("-inf"))
        return torch.topk(choice, top_k, dim=-1).indices


@dataclass(frozen=True)
class JetMoeAdapter(RouterAdapter):
    """JetMoE: the gate returns tokens sorted by expert; logits come last in its output tuple."""

    def chosen_experts(self, module: nn.Module, output: Any) -> torch.Tensor | None:
        """Undo the gate's sort: sorted slot j belongs to the expert whose size run covers j."""
        index_sorted_experts, _, _, expert_size, _ = output
        top_k = int(module.top_k)
        sizes = torch.as_tensor(expert_size, device=index_sorted_experts.device)
        experts = torch.arange(len(sizes), device=sizes.device)
        expert_of_slot = torch.repeat_interleave(experts, sizes)
        chosen = torch.empty_like(index_sorted_experts)
        chosen[index_sorted_experts] = expert_of_slot
        return chosen.view(-1, top_k)


ADAPTERS: dict[str, RouterAdapter] = {
    "olmoe": RouterAdapter("olmoe", ("OlmoeTopKRouter",), "mlp.gate"),
    "mixtral": RouterAdapter("mixtral", ("MixtralTopKRouter",), "mlp.gate"),
    "qwen2_moe": RouterAdapter("qwen2_moe", ("Qwen2MoeTopKRouter",), "mlp.gate"),
    "qwen3_moe": RouterAdapter("qwen3_moe", ("Qwen3MoeTopKRouter",), "mlp.gate"),
    "deepseek_v3": SigmoidGroupAdapter("deepseek_v3", ("DeepseekV3TopkRouter",), "mlp.gate"),
    "granitemoe": RouterAdapter("granitemoe", ("GraniteMoeTopKRouter",), "block_sparse_moe.router"),
    "phimoe": RouterAdapter("phimoe", ("PhimoeTopKRouter",), "mlp.router"),
    "gpt_oss": RouterAdapter("gpt_oss", ("GptOssTopKRouter",), "mlp.router"),
    # The attention experts' gate (self_attention.experts.router) is the same class: the path
    # keeps it out, since only MLP routers count.
    "jetmoe": JetMoeAdapter(
        "jetmoe", ("JetMoeTopKGating",), "mlp.router", logits_index=4, weight_path="layer.weight"
    ),
}


@dataclass(frozen=True)
class RouterSpec:
    """One MoE layer's router: module path, model layer index, the module and its adapter."""

    name: str  # e.g. "model.layers.3.mlp.gate"
    layer_index: int
    module: nn.Module
    adapter: RouterAdapter

    @property
    def num_experts(self) -> int:
        """Number of experts K (rows of the router weight)."""
        return int(self.adapter.weight(self.module).shape[0])

    def weight_matrix(self) -> np.ndarray:
        """The router weight as float64 numpy [K, hidden] (row k = expert k)."""
        return self.adapter.weight(self.module).detach().to("cpu", torch.float64).numpy()


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", None) or type(model).__name__)


def _layer_index(name: str) -> int | None:
    found = _LAYER_INDEX.findall(name)
    return int(found[-1]) if found else None


def _collect(model: nn.Module, adapter: RouterAdapter) -> list[RouterSpec]:
    specs = []
    for name, module in model.named_modules():
        if not adapter.matches(name, module):
            continue
        layer = _layer_index(name)
        if layer is None:
            continue
        specs.append(RouterSpec(name, layer, module, adapter))
    return sorted(specs, key=lambda s: s.layer_index)


def _router_weight_path(module: nn.Module, hidden_size: int | None) -> str | None:
    """Where a router-looking module keeps a [K, hidden] weight, if it does."""
    candidates = [("weight", getattr(module, "weight", None))]
    candidates += [(f"{n}.weight", getattr(c, "weight", None)) for n, c in module.named_children()]
    for path, weight in candidates:
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] < 2:
            continue
        if hidden_size is None or weight.shape[1] == hidden_size:
            return path
    return None


def _generic_specs(model: nn.Module) -> list[RouterSpec]:
    """Routers of an architecture without an adapter: the model's own router-logit recorder first,
    else modules named `...gate`/`...router` inside a decoder layer with a [K, hidden] weight."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    recorders = getattr(model, "_can_record_outputs", None) or {}
    recorder = recorders.get("router_logits") if isinstance(recorders, dict) else None
    # transformers' OutputRecorder (class, index of the logits, optional module-name filter).
    target = getattr(recorder, "target_class", recorder if isinstance(recorder, type) else None)
    index = int(getattr(recorder, "index", 0) or 0)
    name_filter = getattr(recorder, "layer_name", None)
    specs = []
    for name, module in model.named_modules():
        layer = _layer_index(name)
        if layer is None:
            continue
        if target is not None:
            if not isinstance(module, target) or (name_filter and name_filter not in name):
                continue
        elif not re.search(r"\.(gate|router)$", name):
            continue
        if "attention" in name or "attn" in name:
            continue  # attention routers (JetMoE-style mixtures of attention heads) do not count
        path = _router_weight_path(module, hidden)
        if path is None:
            continue
        adapter = RouterAdapter(
            "generic",
            (),
            name.rsplit(".", 1)[-1],
            logits_index=index if target is not None else 0,
            chosen_index=None,
            weight_path=path,
        )
        specs.append(RouterSpec(name, layer, module, adapter))
    return sorted(specs, key=lambda s: s.layer_index)


def find_routers(model: nn.Module) -> list[RouterSpec]:
    """The MLP routers of an MoE model's MoE layers, in depth order (dense layers have none)."""
    model_type = _model_type(model)
    adapter = ADAPTERS.get(model_type)
    specs = _collect(model, adapter) if adapter is not None else []
    if not specs:
        # A known model type whose modules changed names, or an architecture without an adapter.
        specs = _generic_specs(model)
        if specs:
            logger.warning(
                "model type %r has no router adapter; reading %d routers generically (%s) "
                "as softmax over their logits",
                model_type,
                len(specs),
                specs[0].name,
            )
    if not specs:
        has_experts = any(n.endswith("experts") for n, _ in model.named_modules())
        if has_experts:
            raise ModelError(
                f"model type {model_type!r}: expert modules found but no router grokwatch can "
                f"read; supported architectures: {', '.join(sorted(ADAPTERS))}"
            )
        raise ModelError(
            f"model type {model_type!r} ({type(model).__name__}): no Mixture-of-Experts layer "
            "found; grokwatch needs an MoE model"
        )
    sizes = {s.num_experts for s in specs}
    if len(sizes) != 1:
        raise ModelError(
            f"model type {model_type!r}: MoE layers have different expert counts {sorted(sizes)}; "
            "grokwatch needs the same number of experts in every MoE layer"
        )
    return specs
