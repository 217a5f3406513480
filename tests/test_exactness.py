"""Exactness: every value of one tiny checkpoint, recomputed a second, slow, independent way.

The reference below is written from method.md alone: plain transformers loading, one sample at a
time (no padding, no batching), its own forward hooks on the OLMoE routers, softmax and
log-softmax by hand in Python floats (float64), the tau prefix rule, routing embeddings and
cosines in plain Python, and a dynamic-programming Levenshtein. It does not import grokwatch's
encoding, routing, adapters, metrics or distances code. The grokwatch imports are the checkpoint
builder (tinymodels), the probe reader, the public API under test (engine.compute_metrics), and,
in the pair-bound test only, distances.pair_sample/probe_seed: they *define* which pairs a large
group uses (a seeded draw, not a formula that method.md would let us re-derive), so the test
takes the pairs from them and recomputes everything else.

Tolerance: 1e-5 absolute on every float. The product takes the softmax in float32 (method.md
step 2) while the reference uses float64, so routing weights differ by ~1e-8 and cosines by
~1e-7. Distances are means of integer edit distances over identical strings, so both sides
agree to rounding and no relative tolerance is needed. Two things would make 1e-5 meaningless
rather than wrong, and the reference checks the fixture is clear of both (`_check_conditioning`):
a cumulative weight within rounding of tau (the prefix could flip) and a tiny max adjacent cosine
(consistency = mean / max amplifies ~1e-7 errors by 1/max).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import torch

from grokwatch.distances import pair_sample, probe_seed  # pair choice only; see the docstring
from grokwatch.engine import compute_metrics
from grokwatch.probe import Probe, load_probe
from grokwatch.results import ALL_GROUP, CheckpointMetrics, GroupMetrics
from grokwatch.tinymodels import build_tiny_model, save_tiny_checkpoint, tiny_olmoe_config

pytestmark = pytest.mark.slow  # ~20 s: four forward passes of the probe plus the reference

TAU = 0.7
MAX_TOKENS = 64
TOLERANCE = 1e-5
N_LAYERS = 4
N_EXPERTS = 8
# Seed and router scale chosen so that the fixture has peaked, sample-specific routing, one
# flagged sample inside a multi-sample group, and no value near a rounding cliff (asserted).
MODEL_SEED = 120
ROUTER_SCALE = 30.0
CONSISTENCY_EPS = 1e-8  # method.md: r = mean / (max + 1e-8)
# Minimum distance of a cumulative routing weight from tau, of a kept expert's weight from the
# next one's, and of a max adjacent cosine from 0, for 1e-5 agreement to be a fair demand.
TAU_MARGIN = 1e-4
ORDER_MARGIN = 1e-6
COSINE_MARGIN = 0.05
BOUNDARY = "|"  # layer boundary in the expert-level sequence; never equal to an int expert id

PROBE_RECORDS: list[dict[str, str]] = [
    {"group": "arith", "text": "2+2=4 and 3+3=6"},
    {"group": "arith", "text": "x = 7 * 6; y = x - 2"},
    {"group": "arith", "prompt": "Q: what is 12*12? A: ", "completion": "144"},
    {
        "group": "arith",
        # Longer than MAX_TOKENS: exercises truncation.
        "text": "The sum of the first n odd numbers is n^2: 1+3+5+7 = 16 = 4^2, "
        "and 1+3+5+7+9 = 25 = 5^2.",
    },
    {"group": "arith", "text": "Integral of x dx is x^2/2 + C"},
    {"group": "arith", "text": "17 is prime; 21 = 3 * 7 is not."},
    {"group": "code", "text": "def f(x):\n    return x * 2"},
    {"group": "code", "text": "for i in range(10): print(i)"},
    {"group": "code", "text": "import numpy as np"},
    {"group": "code", "text": "while True: break"},
    {"group": "code", "text": "class A: pass"},
    # No group field: belongs to "default", a group of one (distances are NaN).
    {"text": "Water boils at 100 C at sea level."},
]


# ---------------------------------------------------------------- the reference, from method.md


@dataclass(frozen=True)
class RefSample:
    """One sample's reference values."""

    group: str
    loss: float
    n_targets: int
    n_tokens: int
    truncated: bool
    gbar: list[list[float]]  # [L][K]
    experts: tuple[tuple[int, ...], ...]
    pathway: str
    cosines: list[float]
    consistency: float
    complexity: float
    raw_cosine: float
    flagged: bool


def softmax(row: Sequence[float]) -> list[float]:
    """exp(x - max) / sum, in Python floats."""
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def log_softmax(row: Sequence[float]) -> list[float]:
    """x - logsumexp(x), in Python floats."""
    top = max(row)
    log_total = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_total for x in row]


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Unit-cost insert/delete/substitute edit distance by the textbook row-by-row DP."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def tau_prefix(gbar: Sequence[float], tau: float) -> tuple[int, ...]:
    """Experts by weight descending (ties: smaller id) up to the first to push the sum past tau."""
    order = sorted(range(len(gbar)), key=lambda k: (-gbar[k], k))
    kept: list[int] = []
    cumulative = 0.0
    for k in order:
        kept.append(k)
        cumulative += gbar[k]
        if cumulative > tau:
            break
    return tuple(kept)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """dot(a, b) / (|a| |b|) in Python floats."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def expert_sequence(experts: tuple[tuple[int, ...], ...]) -> list[Any]:
    """Expert ids in pathway order with a boundary symbol between layers."""
    sequence: list[Any] = []
    for layer, ids in enumerate(experts):
        if layer:
            sequence.append(BOUNDARY)
        sequence.extend(ids)
    return sequence


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for an empty list."""
    return sum(values) / len(values) if values else math.nan


def reference_samples(checkpoint: Path, probe_records: list[dict[str, str]]) -> list[RefSample]:
    """Every per-sample value, one unpadded forward pass per sample."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    gates = [model.model.layers[i].mlp.gate for i in range(N_LAYERS)]
    router_weights = [gate.weight.detach().double().tolist() for gate in gates]  # [K][hidden]
    captured: dict[int, list[list[float]]] = {}

    def hook(layer: int) -> Any:
        def on_forward(module: torch.nn.Module, args: Any, output: Any) -> None:
            # transformers 5 OlmoeTopKRouter returns (router_logits [tokens, K], weights, ids).
            assert isinstance(output, tuple) and output[0].dim() == 2
            captured[layer] = output[0].detach().double().tolist()

        return on_forward

    handles = [gate.register_forward_hook(hook(i)) for i, gate in enumerate(gates)]
    samples = []
    try:
        for record in probe_records:
            text = record.get("text", record.get("prompt", "") + record.get("completion", ""))
            full = tokenizer(text)["input_ids"]
            ids = full[:MAX_TOKENS]
            first_target = 1  # position 0 has nothing before it to predict it from
            if "prompt" in record:
                prompt_ids = tokenizer(record["prompt"])["input_ids"]
                assert full[: len(prompt_ids)] == prompt_ids, (
                    "character tokenizer: prompt is a prefix"
                )
                first_target = len(prompt_ids)
            captured.clear()
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].double().tolist()
            nll = [
                -log_softmax(logits[t - 1])[ids[t]] for t in range(max(first_target, 1), len(ids))
            ]
            gbar = []
            for layer in range(N_LAYERS):
                rows = [softmax(row) for row in captured[layer]]
                assert len(rows) == len(ids)
                gbar.append([mean([r[k] for r in rows]) for k in range(len(rows[0]))])
            experts = tuple(tau_prefix(g, TAU) for g in gbar)
            embeddings = [
                [
                    sum(g[k] * router_weights[layer][k][h] for k in range(len(g)))
                    for h in range(len(router_weights[layer][0]))
                ]
                for layer, g in enumerate(gbar)
            ]
            cosines = [cosine(embeddings[i], embeddings[i + 1]) for i in range(N_LAYERS - 1)]
            raw = mean(cosines)
            flagged = max(cosines) <= 0
            consistency = math.nan if flagged else raw / (max(cosines) + CONSISTENCY_EPS)
            samples.append(
                RefSample(
                    group=record.get("group", "default"),
                    loss=mean(nll),
                    n_targets=len(nll),
                    n_tokens=len(ids),
                    truncated=len(full) > MAX_TOKENS,
                    gbar=gbar,
                    experts=experts,
                    pathway="-".join(",".join(str(k) for k in layer) for layer in experts),
                    cosines=cosines,
                    consistency=consistency,
                    complexity=1.0 - consistency,
                    raw_cosine=raw,
                    flagged=flagged,
                )
            )
    finally:
        for handle in handles:
            handle.remove()
    return samples


class HasPathway(Protocol):
    """Anything with a pathway string and its experts: a RefSample or a product SampleMetrics."""

    @property
    def pathway(self) -> str: ...

    @property
    def experts(self) -> tuple[tuple[int, ...], ...]: ...


def pair_vector(a: HasPathway, b: HasPathway) -> tuple[float, ...]:
    """(char, expert-level, normalised, per-layer...) DP distances of one pair."""
    char = levenshtein(a.pathway, b.pathway)
    layers = [
        levenshtein(",".join(map(str, a.experts[layer])), ",".join(map(str, b.experts[layer])))
        for layer in range(N_LAYERS)
    ]
    return (
        char,
        levenshtein(expert_sequence(a.experts), expert_sequence(b.experts)),
        char / max(len(a.pathway), len(b.pathway)),
        *layers,
    )


def pair_distances(
    members: Sequence[HasPathway], pairs: Sequence[tuple[int, int]]
) -> tuple[float, ...]:
    """(char, expert-level, normalised, per-layer...) mean DP distances over the given pairs."""
    vectors = [pair_vector(members[i], members[j]) for i, j in pairs]
    return tuple(mean([v[field] for v in vectors]) for field in range(3 + N_LAYERS))


def reference_group(name: str, members: list[RefSample]) -> GroupMetrics:
    """One group's row over all pairs i < j."""
    pairs = list(itertools.combinations(range(len(members)), 2))
    char, expert, norm, *layers = pair_distances(members, pairs)
    counted = [s for s in members if not s.flagged]
    return GroupMetrics(
        group=name,
        n_samples=len(members),
        n_flagged=len(members) - len(counted),
        loss=mean([s.loss for s in members]),
        pathway_distance=char,
        pathway_distance_expert=expert,
        pathway_distance_norm=norm,
        layer_distances=tuple(layers),
        consistency=mean([s.consistency for s in counted]),
        complexity=mean([s.complexity for s in counted]),
        raw_cosine=mean([s.raw_cosine for s in members]),
        n_pairs=len(pairs),
    )


def size_weighted(values: Sequence[float], sizes: Sequence[int]) -> float:
    """Mean weighted by group size over the groups where the value is defined (not NaN)."""
    present = [(v, n) for v, n in zip(values, sizes, strict=True) if not math.isnan(v)]
    total = sum(n for _, n in present)
    return sum(v * n for v, n in present) / total if total else math.nan


def reference_all_row(groups: list[GroupMetrics]) -> GroupMetrics:
    """The `__all__` row: group values weighted by group size."""
    sizes = [g.n_samples for g in groups]

    def weighted(field: str) -> float:
        return size_weighted([getattr(g, field) for g in groups], sizes)

    return GroupMetrics(
        group=ALL_GROUP,
        n_samples=sum(sizes),
        n_flagged=sum(g.n_flagged for g in groups),
        loss=weighted("loss"),
        pathway_distance=weighted("pathway_distance"),
        pathway_distance_expert=weighted("pathway_distance_expert"),
        pathway_distance_norm=weighted("pathway_distance_norm"),
        layer_distances=tuple(
            size_weighted([g.layer_distances[layer] for g in groups], sizes)
            for layer in range(N_LAYERS)
        ),
        consistency=weighted("consistency"),
        complexity=weighted("complexity"),
        raw_cosine=weighted("raw_cosine"),
        n_pairs=sum(g.n_pairs for g in groups),
    )


def group_members(samples: list[RefSample]) -> dict[str, list[RefSample]]:
    """Samples by group, groups in order of first appearance."""
    members: dict[str, list[RefSample]] = {}
    for sample in samples:
        members.setdefault(sample.group, []).append(sample)
    return members


# ---------------------------------------------------------------- fixture and comparison


@dataclass(frozen=True)
class Fixture:
    """The tiny checkpoint, its probe, and the reference values."""

    checkpoint: Path
    probe: Probe
    samples: list[RefSample]
    groups: list[GroupMetrics]  # per group, then ALL_GROUP


def write_checkpoint(directory: Path, seed: int) -> Path:
    """Save a 4-layer tiny OLMoE whose routers are scaled up so routing differs between samples."""
    model = build_tiny_model(
        tiny_olmoe_config(num_layers=N_LAYERS, num_experts=N_EXPERTS), seed=seed
    )
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(ROUTER_SCALE)
    return save_tiny_checkpoint(directory, model=model)


def _check_conditioning(samples: list[RefSample]) -> None:
    """Fail loudly if the fixture sits where float32 vs float64 rounding could flip a value."""
    for index, sample in enumerate(samples):
        for layer, gbar in enumerate(sample.gbar):
            ranked = sorted(gbar, reverse=True)
            cumulative = list(itertools.accumulate(ranked))
            kept = len(sample.experts[layer])
            assert min(abs(c - TAU) for c in cumulative[:-1]) > TAU_MARGIN, (
                f"sample {index} layer {layer}: a cumulative weight is within {TAU_MARGIN} of "
                "tau; pick another MODEL_SEED"
            )
            gaps = [ranked[k] - ranked[k + 1] for k in range(min(kept, len(ranked) - 1))]
            assert min(gaps) > ORDER_MARGIN, (
                f"sample {index} layer {layer}: near-tied kept experts; pick another MODEL_SEED"
            )
        assert abs(max(sample.cosines)) > COSINE_MARGIN, (
            f"sample {index}: max adjacent cosine {max(sample.cosines):.4f} is near 0, where "
            "consistency amplifies rounding; pick another MODEL_SEED"
        )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    """Build the checkpoint and probe once and compute the reference values."""
    root = tmp_path_factory.mktemp("exactness")
    checkpoint = write_checkpoint(root / "checkpoint", MODEL_SEED)
    probe_path = root / "probe.jsonl"
    probe_path.write_text("".join(json.dumps(r) + "\n" for r in PROBE_RECORDS), encoding="utf-8")
    samples = reference_samples(checkpoint, PROBE_RECORDS)
    _check_conditioning(samples)
    groups = [reference_group(name, m) for name, m in group_members(samples).items()]
    return Fixture(
        checkpoint, load_probe(probe_path), samples, [*groups, reference_all_row(groups)]
    )


def close(got: float, want: float, tolerance: float = TOLERANCE) -> bool:
    """Equal within the absolute tolerance, with NaN equal only to NaN."""
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    return abs(got - want) <= tolerance


def compare_group(got: GroupMetrics, want: GroupMetrics) -> list[str]:
    """Every field of a group row; returns one line per disagreement."""
    where = f"group {want.group!r}"
    problems = []
    for name in ("n_samples", "n_flagged", "n_pairs"):
        if getattr(got, name) != getattr(want, name):
            problems.append(f"{where} {name}: {getattr(got, name)} != {getattr(want, name)}")
    for name in (
        "loss",
        "pathway_distance",
        "pathway_distance_expert",
        "pathway_distance_norm",
        "consistency",
        "complexity",
        "raw_cosine",
    ):
        if not close(getattr(got, name), getattr(want, name)):
            problems.append(f"{where} {name}: {getattr(got, name)!r} != {getattr(want, name)!r}")
    if len(got.layer_distances) != len(want.layer_distances) or not all(
        close(g, w) for g, w in zip(got.layer_distances, want.layer_distances, strict=False)
    ):
        problems.append(f"{where} layer_distances: {got.layer_distances} != {want.layer_distances}")
    return problems


def compare_checkpoint(got: CheckpointMetrics, fx: Fixture) -> list[str]:
    """Every per-sample, per-group and usage value; returns one line per disagreement."""
    problems = []
    if [s.index for s in got.samples] != list(range(len(fx.samples))):
        return [f"sample indices {[s.index for s in got.samples]}: a sample was dropped"]
    for index, (g, w) in enumerate(zip(got.samples, fx.samples, strict=True)):
        where = f"sample {index}"
        if (g.group, g.pathway, g.experts, g.flagged) != (w.group, w.pathway, w.experts, w.flagged):
            problems.append(
                f"{where} (group, pathway, experts, flagged): "
                f"{(g.group, g.pathway, g.experts, g.flagged)} != "
                f"{(w.group, w.pathway, w.experts, w.flagged)}"
            )
        for name in ("loss", "consistency", "complexity", "raw_cosine"):
            if not close(getattr(g, name), getattr(w, name)):
                problems.append(f"{where} {name}: {getattr(g, name)!r} != {getattr(w, name)!r}")
    if [g.group for g in got.groups] != [w.group for w in fx.groups]:
        problems.append(f"groups {[g.group for g in got.groups]} != {[w.group for w in fx.groups]}")
    else:
        for g, w in zip(got.groups, fx.groups, strict=True):
            problems.extend(compare_group(g, w))
    usage = [
        [mean([s.gbar[layer][k] for s in fx.samples]) for k in range(N_EXPERTS)]
        for layer in range(N_LAYERS)
    ]
    if got.expert_usage.shape != (N_LAYERS, N_EXPERTS) or not all(
        close(float(got.expert_usage[layer, k]), usage[layer][k])
        for layer in range(N_LAYERS)
        for k in range(N_EXPERTS)
    ):
        problems.append(f"expert_usage: {got.expert_usage.tolist()} != {usage}")
    if got.layer_indices != list(range(N_LAYERS)) or got.tau != TAU:
        problems.append(f"layer_indices {got.layer_indices} / tau {got.tau}")
    return problems


# ---------------------------------------------------------------- tests


def test_fixture_exercises_every_path(reference: Fixture) -> None:
    """The probe covers what the comparison must cover: truncation, prompts, flags, NaN groups."""
    samples = reference.samples
    assert any(s.truncated and s.n_tokens == MAX_TOKENS for s in samples)
    prompt_sample = samples[2]
    assert prompt_sample.n_targets < prompt_sample.n_tokens - 1  # completion-only loss
    sizes = {g.group: g.n_samples for g in reference.groups}
    assert sizes == {"arith": 6, "code": 5, "default": 1, ALL_GROUP: 12}
    assert math.isnan(reference.groups[2].pathway_distance)  # a group of one has no pairs
    flagged_groups = {s.group for s in samples if s.flagged}
    assert flagged_groups and flagged_groups <= {"arith", "code"}, flagged_groups
    assert not all(s.flagged for s in samples)
    for group in reference.groups[:2]:
        assert group.pathway_distance > 0  # pathways differ within the group


def test_every_value_matches_independent_reference(reference: Fixture) -> None:
    """compute_metrics equals the one-sample-at-a-time reference to 1e-5, value by value."""
    got = compute_metrics(
        reference.checkpoint, reference.probe, tau=TAU, max_tokens=MAX_TOKENS, device="cpu"
    )
    problems = compare_checkpoint(got, reference)
    assert not problems, "\n".join(problems)


def _distance_values(group: GroupMetrics) -> tuple[float, ...]:
    """A group row's distances in pair_vector's field order."""
    return (
        group.pathway_distance,
        group.pathway_distance_expert,
        group.pathway_distance_norm,
        *group.layer_distances,
    )


def test_sampled_pairs_are_fixed_and_evaluated_exactly(reference: Fixture, tmp_path: Path) -> None:
    """Above a pair bound of 3, distances are DP means over pair_sample's pairs, at every call.

    The same pairs serve a second call and a second checkpoint, so curves stay comparable.
    """
    bound = 3
    members = group_members(reference.samples)
    large = [name for name, m in members.items() if len(m) > bound]
    assert large == ["arith", "code"]
    pairs = {}
    for name in large:
        drawn = pair_sample(len(members[name]), bound, probe_seed(reference.probe.hash, name))
        assert drawn is not None
        pairs[name] = list(zip(drawn[0].tolist(), drawn[1].tolist(), strict=True))
        assert len(pairs[name]) == math.comb(bound, 2) == len(set(pairs[name]))
        assert all(0 <= i < j < len(members[name]) for i, j in pairs[name])

    def run(checkpoint: Path) -> CheckpointMetrics:
        return compute_metrics(
            checkpoint,
            reference.probe,
            tau=TAU,
            max_tokens=MAX_TOKENS,
            pair_bound=bound,
            device="cpu",
        )

    first = run(reference.checkpoint)
    for name in large:
        got = first.group(name)
        assert got.n_pairs == len(pairs[name])
        got_values = _distance_values(got)
        assert all(
            close(g, w)
            for g, w in zip(got_values, pair_distances(members[name], pairs[name]), strict=True)
        ), (name, got_values, pair_distances(members[name], pairs[name]))
        # The check tells pair sets apart: no other 3-pair set gives the same values.
        vectors = {
            pair: pair_vector(members[name][pair[0]], members[name][pair[1]])
            for pair in itertools.combinations(range(len(members[name])), 2)
        }
        alike = sum(
            all(
                close(g, mean([vectors[pair][field] for pair in subset]))
                for field, g in enumerate(got_values)
            )
            for subset in itertools.combinations(vectors, len(pairs[name]))
        )
        assert alike == 1, f"{name}: {alike} pair sets give the same values"
    assert first.group(ALL_GROUP).n_pairs == 2 * math.comb(bound, 2)
    assert first.group("default").n_pairs == 0

    # Same probe, same pairs: at a second call, and at a different checkpoint of the run.
    again = run(reference.checkpoint)
    for name in large:
        assert compare_group(again.group(name), first.group(name)) == []
    other = run(write_checkpoint(tmp_path / "later", MODEL_SEED + 1))
    assert [s.pathway for s in other.samples] != [s.pathway for s in first.samples]
    for name in large:
        # The other checkpoint's pathways come from the product (their exactness is the test
        # above); what this checks is that the pairs behind its distances did not change.
        rows = [s for s in other.samples if s.group == name]
        got_values = _distance_values(other.group(name))
        want_values = pair_distances(rows, pairs[name])
        assert all(close(g, w) for g, w in zip(got_values, want_values, strict=True)), (
            name,
            got_values,
            want_values,
        )
