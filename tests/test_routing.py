"""Routing capture on tiny random MoE models of every supported architecture (CPU, float32)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from transformers import LlamaConfig

from grokwatch.adapters import ADAPTERS, SIGMOID_NORMALISED, SOFTMAX, find_routers
from grokwatch.encoding import EncodedProbe, encode_probe
from grokwatch.errors import ModelError
from grokwatch.probe import Probe, ProbeSample
from grokwatch.routing import capture_token_routing, run_forward, use_eager_experts
from grokwatch.tinymodels import TINY_ARCHITECTURES, build_tiny_model, build_tokenizer, tiny_config

# MoE layers of each tiny config: qwen2_moe makes layer 1 dense (mlp_only_layers), deepseek_v3
# keeps its first layer dense (first_k_dense_replace=1); the others are MoE throughout.
EXPECTED_MOE_LAYERS = {arch: [0, 1, 2] for arch in TINY_ARCHITECTURES} | {
    "qwen2_moe": [0, 2, 3],
    "deepseek_v3": [1, 2, 3],
}
TEXTS = [
    "2+2=4",
    "def f(x):\n    return x * 2",
    "The cat sat on the mat.",
    "ok",
    "Water boils at 100 C at sea level.",
]

_models: dict[str, nn.Module] = {}


def _model(arch: str) -> nn.Module:
    """One tiny random model per architecture, shared by the tests (seeded, built once)."""
    if arch not in _models:
        _models[arch] = build_tiny_model(tiny_config(arch), seed=0)
    return _models[arch]


@pytest.fixture(scope="module")
def encoded() -> EncodedProbe:
    probe = Probe(samples=tuple(ProbeSample(t) for t in TEXTS), source="test")
    return encode_probe(build_tokenizer(), probe)


def _batch(encoded: EncodedProbe) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in encoded.input_ids)
    ids = torch.zeros((len(encoded.input_ids), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(encoded.input_ids):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_find_routers_finds_exactly_the_moe_layers(arch: str) -> None:
    specs = find_routers(_model(arch))
    assert [s.layer_index for s in specs] == EXPECTED_MOE_LAYERS[arch]
    for spec in specs:
        assert spec.adapter is ADAPTERS[arch]
        assert spec.name.endswith(spec.adapter.path_suffix)
        assert f"layers.{spec.layer_index}." in spec.name
        assert "attention" not in spec.name  # JetMoE's attention routers do not count
        assert spec.weight_matrix().shape == (8, 32)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_run_forward_gives_distributions_losses_and_router_weights(
    arch: str, encoded: EncodedProbe
) -> None:
    model = _model(arch)
    out = run_forward(model, encoded, batch_size=2, device="cpu")
    n = len(TEXTS)
    assert out.routing.shape == (n, 3, 8)
    assert out.routing.dtype == np.float64
    np.testing.assert_allclose(out.routing.sum(axis=-1), 1.0, atol=1e-12)
    assert (out.routing >= 0).all()
    assert out.layer_indices == EXPECTED_MOE_LAYERS[arch]
    assert out.score_kind == (SIGMOID_NORMALISED if arch == "deepseek_v3" else SOFTMAX)
    assert out.n_tokens.tolist() == [len(ids) for ids in encoded.input_ids]
    # Random init: the loss sits near ln(vocab size).
    assert np.all(np.abs(out.losses - math.log(model.config.vocab_size)) < 1.0)
    for weights, spec in zip(out.router_weights, find_routers(model), strict=True):
        assert weights.dtype == np.float64 and weights.shape == (8, 32)
        np.testing.assert_array_equal(
            weights, spec.adapter.weight(spec.module).detach().double().numpy()
        )


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_batched_values_equal_one_sample_at_a_time(arch: str, encoded: EncodedProbe) -> None:
    model = _model(arch)
    batched = run_forward(model, encoded, batch_size=16)
    single = run_forward(model, encoded, batch_size=1)
    np.testing.assert_allclose(batched.routing, single.routing, atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched.losses, single.losses, atol=1e-5, rtol=0)


def _experts_inputs(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Pre-hooks on each MoE block's experts module: the expert ids the experts were given."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for spec in find_routers(model):
        block = model.get_submodule(spec.name.rsplit(".", 1)[0])
        experts = getattr(block, "experts", None)
        if experts is None:
            continue

        def grab(module: nn.Module, args: tuple, kwargs: dict, name: str = spec.name) -> None:
            seen[name] = args[1] if len(args) > 1 else kwargs["top_k_index"]

        handles.append(experts.register_forward_pre_hook(grab, with_kwargs=True))
    return seen, handles


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_experts_ranked_first_are_the_experts_the_model_picked(
    arch: str, encoded: EncodedProbe
) -> None:
    model = _model(arch)
    ids, mask = _batch(encoded)
    seen, handles = _experts_inputs(model)
    try:
        traces = capture_token_routing(model, ids, mask)
    finally:
        for handle in handles:
            handle.remove()
    assert [t.layer_index for t in traces] == EXPECTED_MOE_LAYERS[arch]
    for trace in traces:
        assert trace.distribution.dtype == torch.float32
        assert trace.chosen is not None and trace.predicted is not None
        picked = trace.chosen.sort(dim=-1).values
        assert torch.equal(trace.predicted.sort(dim=-1).values, picked)
        if trace.name in seen:  # the ids the experts module actually received
            assert torch.equal(seen[trace.name].reshape(picked.shape).sort(-1).values, picked)
        if arch != "deepseek_v3":
            top = trace.distribution.topk(picked.shape[-1], dim=-1).indices.sort(dim=-1).values
            assert torch.equal(top, picked)
    if arch not in ("jetmoe",):
        assert len(seen) == len(traces)  # the cross-check above ran for every layer


def test_deepseek_selection_with_bias_and_group_limit(encoded: EncodedProbe) -> None:
    model = build_tiny_model(tiny_config("deepseek_v3"), seed=1)
    torch.manual_seed(1)
    for spec in find_routers(model):
        spec.module.e_score_correction_bias.copy_(torch.randn(8) * 0.3)
    ids, mask = _batch(encoded)
    differs = 0
    for trace in capture_token_routing(model, ids, mask):
        picked = trace.chosen.sort(dim=-1).values
        assert torch.equal(trace.predicted.sort(dim=-1).values, picked)
        plain = trace.distribution.topk(2, dim=-1).indices.sort(dim=-1).values
        differs += int((plain != picked).any(dim=-1).sum())
    assert differs > 0  # the bias and the group limit changed some choices: the rule was exercised


def test_deepseek_without_bias_or_group_limit_ranks_like_its_scores(encoded: EncodedProbe) -> None:
    config = tiny_config("deepseek_v3")
    config.topk_group = config.n_group
    model = build_tiny_model(config, seed=2)
    ids, mask = _batch(encoded)
    for trace in capture_token_routing(model, ids, mask):
        top = trace.distribution.topk(2, dim=-1).indices.sort(dim=-1).values
        assert torch.equal(top, trace.chosen.sort(dim=-1).values)


def test_padding_is_left_out_of_the_routing_means(encoded: EncodedProbe) -> None:
    model = _model("olmoe")
    out = run_forward(model, encoded, batch_size=16)
    shortest = min(range(len(TEXTS)), key=lambda i: len(encoded.input_ids[i]))
    ids = torch.tensor([encoded.input_ids[shortest]])
    for layer, trace in enumerate(capture_token_routing(model, ids)):
        expected = trace.distribution.double().mean(dim=0).numpy()
        np.testing.assert_allclose(out.routing[shortest, layer], expected, atol=1e-6)


def test_losses_match_transformers_loss_including_completion_only() -> None:
    model = _model("mixtral")
    tokenizer = build_tokenizer()
    probe = Probe(
        samples=(ProbeSample("Q: 3+4? A: 7", prompt="Q: 3+4? A: "), ProbeSample("plain text")),
        source="test",
    )
    encoded = encode_probe(tokenizer, probe)
    out = run_forward(model, encoded, batch_size=2)
    with torch.no_grad():
        for row, (tokens, counted) in enumerate(
            zip(encoded.input_ids, encoded.loss_masks, strict=True)
        ):
            ids = torch.tensor([tokens])
            labels = ids.masked_fill(~torch.tensor([counted]), -100)
            reference = model(input_ids=ids, labels=labels).loss.item()
            assert out.losses[row] == pytest.approx(reference, abs=1e-5)


def test_model_without_moe_layers_is_refused() -> None:
    config = LlamaConfig(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    with pytest.raises(ModelError, match="no Mixture-of-Experts layer found; grokwatch needs"):
        find_routers(build_tiny_model(config))


def test_unknown_architecture_uses_the_generic_adapter(encoded: EncodedProbe) -> None:
    known = run_forward(_model("olmoe"), encoded)
    model = build_tiny_model(tiny_config("olmoe"), seed=0)
    model.config.model_type = "mystery_moe"
    specs = find_routers(model)
    assert [s.adapter.arch for s in specs] == ["generic"] * 3
    np.testing.assert_allclose(run_forward(model, encoded).routing, known.routing, atol=1e-12)
    # Without the model's router-logit recorder, the name/shape heuristic finds the same gates.
    model._can_record_outputs = {}
    assert [s.name for s in find_routers(model)] == [s.name for s in specs]


def test_unknown_moe_without_a_readable_router_names_the_model_type() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.experts = nn.ModuleList([nn.Linear(8, 8) for _ in range(4)])

    class Strange(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = SimpleNamespace(model_type="strange_moe", hidden_size=8)
            self.layers = nn.ModuleList([Block()])

    with pytest.raises(ModelError, match="'strange_moe': expert modules found but no router"):
        find_routers(Strange())


def test_bfloat16_model_still_scores_in_float32(encoded: EncodedProbe) -> None:
    model = build_tiny_model(tiny_config("qwen3_moe"), seed=0).to(torch.bfloat16)
    ids, mask = _batch(encoded)
    for trace in capture_token_routing(model, ids, mask):
        assert trace.distribution.dtype == torch.float32
        torch.testing.assert_close(
            trace.distribution.sum(-1), torch.ones(ids.numel()), atol=1e-6, rtol=0
        )
    out = run_forward(model, encoded)
    assert np.isfinite(out.losses).all()


def test_eager_experts_switch_keeps_results(encoded: EncodedProbe) -> None:
    model = build_tiny_model(tiny_config("olmoe", experts_implementation=None), seed=0)
    before = run_forward(model, encoded)
    assert use_eager_experts(model)
    assert model.config._experts_implementation == "eager"
    after = run_forward(model, encoded)
    np.testing.assert_allclose(after.routing, before.routing, atol=1e-5)
    np.testing.assert_allclose(after.losses, before.losses, atol=1e-5)


def test_empty_probe_and_training_mode_restored() -> None:
    model = _model("granitemoe")
    empty = EncodedProbe([], [], [], [(0, "dropped")], 2048, "all-tokens")
    model.train()
    try:
        out = run_forward(model, empty)
        assert model.training
    finally:
        model.eval()
    assert out.routing.shape == (0, 3, 8)
    assert out.losses.shape == (0,)
