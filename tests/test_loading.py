"""Loading checkpoints safely and swapping new weights into a live model in place."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen2MoeConfig

from grokwatch.errors import CheckpointError, CheckpointVanished, ModelError, UsageError
from grokwatch.loading import (
    LoadedModel,
    checkpoint_signature,
    load_model,
    model_summary,
    peak_memory_bytes,
    reset_peak_memory,
    resolve_device,
)
from grokwatch.tinymodels import (
    CHARACTERS,
    SPECIAL_TOKENS,
    build_tiny_model,
    save_tiny_checkpoint,
    tiny_olmoe_config,
)
from grokwatch.weightswap import reload_weights

VOCAB = len(SPECIAL_TOKENS) + len(CHARACTERS)


def tiny_mixtral_config() -> MixtralConfig:
    """Mixtral saves experts as block_sparse_moe.experts.N.w1/w2/w3 (the original layout)."""
    return MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
    )


def tiny_qwen2_moe_config() -> Qwen2MoeConfig:
    """Qwen2-MoE adds a shared expert; tied embeddings check that a tied weight counts once."""
    return Qwen2MoeConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=True,
    )


CONFIGS = {
    "olmoe": tiny_olmoe_config,
    "mixtral": tiny_mixtral_config,
    "qwen2_moe": tiny_qwen2_moe_config,
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two checkpoints (seeds 0 and 1) of the same config per architecture."""
    root = tmp_path_factory.mktemp("ckpts")
    return {
        name: (
            save_tiny_checkpoint(root / name / "a", make(), seed=0),
            save_tiny_checkpoint(root / name / "b", make(), seed=1),
        )
        for name, make in CONFIGS.items()
    }


def fresh(directory: Path) -> Any:
    """A reference model straight from transformers, loaded the way load_model loads on CPU."""
    model = AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, dtype=torch.float32, experts_implementation="eager"
    )
    return model.eval()


def assert_same_weights(model: Any, reference: Any) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    different = [key for key in theirs if not torch.equal(ours[key], theirs[key])]
    assert different == []


def logits(loaded: LoadedModel, model: Any) -> torch.Tensor:
    batch = loaded.tokenizer(
        ["def f(x): return x + 1", "The cat sat."], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        return model(**batch).logits


def copy_checkpoint(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def rewrite_weights(directory: Path, keep: Any) -> None:
    """Re-save model.safetensors with only the keys for which keep(key) is true."""
    state = load_file(directory / "model.safetensors")
    save_file(
        {k: v for k, v in state.items() if keep(k)},
        directory / "model.safetensors",
        {"format": "pt"},
    )


def sharded_copy(source_model_dir: Path, destination: Path, seed: int = 1) -> Path:
    model = build_tiny_model(tiny_olmoe_config(), seed=seed)
    model.save_pretrained(destination, max_shard_size="200KB")
    shutil.copy(source_model_dir / "tokenizer.json", destination / "tokenizer.json")
    shutil.copy(source_model_dir / "tokenizer_config.json", destination / "tokenizer_config.json")
    return destination


# ---------------------------------------------------------------------------------------------
# Loading


def test_load_model_on_cpu_is_eval_float32_with_eager_experts(ckpts: dict) -> None:
    a, _ = ckpts["olmoe"]
    loaded = load_model(a, device="cpu")
    assert loaded.device == torch.device("cpu")
    assert not loaded.model.training
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert loaded.model.config._experts_implementation == "eager"
    assert loaded.signature == checkpoint_signature(a)
    assert loaded.weights_dir == a.absolute()
    assert loaded.tokenizer("ab")["input_ids"][0] == loaded.tokenizer.bos_token_id
    assert_same_weights(loaded.model, fresh(a))


def test_model_summary_reads_each_architecture(ckpts: dict) -> None:
    expected = {
        "olmoe": ("olmoe", 4, 8, 2, 64),
        "mixtral": ("mixtral", 3, 4, 2, 64),
        "qwen2_moe": ("qwen2_moe", 3, 4, 2, 64),
    }
    for name, (a, _) in ckpts.items():
        model = load_model(a, device="cpu").model
        summary = model_summary(model)
        figures = ("model_type", "n_layers", "n_experts", "top_k", "hidden")
        assert tuple(summary[k] for k in figures) == expected[name]
        # Tied embeddings (qwen2_moe here) are one tensor and are counted once.
        assert summary["n_params"] == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# In-place reload


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_reload_matches_a_fresh_load_experts_included(ckpts: dict, arch: str) -> None:
    a, b = ckpts[arch]
    loaded = load_model(a, device="cpu")
    reference = fresh(b)
    expert_keys = [k for k in reference.state_dict() if ".experts." in k]
    assert expert_keys, "the architecture should have fused expert weights"
    before = {k: loaded.model.state_dict()[k].clone() for k in expert_keys}
    parameter_ids = {name: id(p) for name, p in loaded.model.named_parameters()}

    reload_weights(loaded, b)

    assert_same_weights(loaded.model, reference)
    assert all(not torch.equal(before[k], reference.state_dict()[k]) for k in expert_keys)
    assert torch.equal(logits(loaded, loaded.model), logits(loaded, reference))
    # In place: the same parameter objects now hold the new values.
    assert {name: id(p) for name, p in loaded.model.named_parameters()} == parameter_ids
    assert loaded.weights_dir == b.absolute()


def test_reload_from_a_sharded_checkpoint_merges_experts_across_shards(
    ckpts: dict, tmp_path: Path
) -> None:
    a, _ = ckpts["olmoe"]
    sharded = sharded_copy(a, tmp_path / "sharded")
    weight_map = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    layer0_shards = {
        f for k, f in weight_map.items() if k.startswith("model.layers.0.mlp.experts.")
    }
    assert len(set(weight_map.values())) > 2 and len(layer0_shards) > 1

    loaded = load_model(a, device="cpu")
    reload_weights(loaded, sharded)
    reference = fresh(sharded)
    assert_same_weights(loaded.model, reference)
    assert torch.equal(logits(loaded, loaded.model), logits(loaded, reference))
    assert_same_weights(load_model(sharded, device="cpu").model, reference)


def test_naive_load_state_dict_leaves_experts_stale(ckpts: dict) -> None:
    """Why reload_weights exists: strict=False silently skips the fused experts."""
    a, b = ckpts["olmoe"]
    model = load_model(a, device="cpu").model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = model.load_state_dict(load_file(b / "model.safetensors"), strict=False)
    wanted = fresh(b).state_dict()
    # Norm weights start at ones in both checkpoints; stale means "should have changed, did not".
    stale = sorted(
        k
        for k, v in model.state_dict().items()
        if torch.equal(v, before[k]) and not torch.equal(v, wanted[k])
    )
    assert stale == sorted(result.missing_keys)
    assert len(stale) == 8 and all(".mlp.experts." in k for k in stale)
    assert len(result.unexpected_keys) == 96


def test_reload_refuses_a_checkpoint_missing_a_layers_experts(ckpts: dict, tmp_path: Path) -> None:
    a, b = ckpts["olmoe"]
    partial = copy_checkpoint(b, tmp_path / "partial")
    rewrite_weights(partial, keep=lambda k: "layers.1.mlp.experts." not in k)
    loaded = load_model(a, device="cpu")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}

    with pytest.raises(
        CheckpointError, match=r"model\.layers\.1\.mlp\.experts\.(down|gate_up)_proj"
    ):
        reload_weights(loaded, partial)
    # Refused before anything was copied: the model still holds checkpoint a.
    assert loaded.weights_dir == a.absolute()
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())
    with pytest.raises(CheckpointError, match="missing"):
        load_model(partial, device="cpu")


def test_reload_refuses_a_layer_with_one_expert_missing(ckpts: dict, tmp_path: Path) -> None:
    a, b = ckpts["olmoe"]
    partial = copy_checkpoint(b, tmp_path / "seven_experts")
    rewrite_weights(partial, keep=lambda k: "layers.1.mlp.experts.3." not in k)
    loaded = load_model(a, device="cpu")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .*experts.* has shape \(7,"):
        reload_weights(loaded, partial)
    assert loaded.weights_dir is None  # a partial swap is marked so the caller reloads in full


def test_shape_mismatch_names_the_file_and_the_weight(ckpts: dict, tmp_path: Path) -> None:
    a, _ = ckpts["olmoe"]
    wrong = save_tiny_checkpoint(tmp_path / "wrong", tiny_olmoe_config(vocab_size=VOCAB + 19))
    shutil.copy(a / "config.json", wrong / "config.json")
    loaded = load_model(a, device="cpu")
    with pytest.raises(
        CheckpointError, match=rf"model\.safetensors: .* has shape \({VOCAB + 19}, 64\)"
    ):
        reload_weights(loaded, wrong)
    with pytest.raises(CheckpointError, match=rf"has shape \({VOCAB + 19}, 64\)"):
        load_model(wrong, device="cpu")


def test_reload_refuses_another_config(ckpts: dict, tmp_path: Path) -> None:
    a, _ = ckpts["olmoe"]
    other = save_tiny_checkpoint(tmp_path / "other", tiny_olmoe_config(top_k=3))
    loaded = load_model(a, device="cpu")
    assert checkpoint_signature(other) != loaded.signature
    with pytest.raises(CheckpointError, match=r"config\.json: config differs.*load_model"):
        reload_weights(loaded, other)


def test_signature_ignores_keys_that_do_not_change_weights(ckpts: dict, tmp_path: Path) -> None:
    a, b = ckpts["olmoe"]
    assert checkpoint_signature(a) == checkpoint_signature(b)
    edited = copy_checkpoint(a, tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    config.update(_name_or_path="/elsewhere", transformers_version="9.9.9", dtype="bfloat16")
    (edited / "config.json").write_text(json.dumps(config))
    assert checkpoint_signature(edited) == checkpoint_signature(a)
    config["num_experts"] = 16
    (edited / "config.json").write_text(json.dumps(config))
    assert checkpoint_signature(edited) != checkpoint_signature(a)


# ---------------------------------------------------------------------------------------------
# Corrupt and incomplete checkpoints


@pytest.fixture()
def sharded(ckpts: dict, tmp_path: Path) -> Path:
    return sharded_copy(ckpts["olmoe"][0], tmp_path / "sharded")


def second_shard(directory: Path) -> Path:
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    return directory / sorted(set(weight_map.values()))[1]


def test_truncated_shard_is_named(ckpts: dict, sharded: Path) -> None:
    shard = second_shard(sharded)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    loaded = load_model(ckpts["olmoe"][0], device="cpu")
    with pytest.raises(CheckpointError, match=rf"{shard.name}: is .+ of .+; wait for the writer"):
        load_model(sharded, device="cpu")
    with pytest.raises(CheckpointError, match=shard.name):
        reload_weights(loaded, sharded)
    assert loaded.weights_dir is not None  # refused before any weight was touched


def test_garbage_shard_is_named(ckpts: dict, sharded: Path) -> None:
    shard = second_shard(sharded)
    size = shard.stat().st_size
    shard.write_bytes(torch.randint(0, 256, (size,), dtype=torch.uint8).numpy().tobytes())
    loaded = load_model(ckpts["olmoe"][0], device="cpu")
    with pytest.raises(CheckpointError, match=rf"{shard.name}: header does not parse"):
        load_model(sharded, device="cpu")
    with pytest.raises(CheckpointError, match=shard.name):
        reload_weights(loaded, sharded)


def test_unparsable_header_is_named(ckpts: dict, tmp_path: Path) -> None:
    broken = copy_checkpoint(ckpts["olmoe"][1], tmp_path / "broken")
    body = b"{not json at all" + b" " * 48
    (broken / "model.safetensors").write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: header does not parse \(not JSON\)"
    ):
        load_model(broken, device="cpu")


def test_missing_shard_is_named(ckpts: dict, sharded: Path) -> None:
    shard = second_shard(sharded)
    shard.unlink()
    loaded = load_model(ckpts["olmoe"][0], device="cpu")
    for attempt in (
        lambda: load_model(sharded, device="cpu"),
        lambda: reload_weights(loaded, sharded),
    ):
        with pytest.raises(
            CheckpointError, match=rf"index\.json: names shard {shard.name}, which is missing"
        ):
            attempt()


def test_missing_directory_vanished(ckpts: dict, tmp_path: Path) -> None:
    loaded = load_model(ckpts["olmoe"][0], device="cpu")
    gone = tmp_path / "checkpoint-900"
    for attempt in (
        lambda: load_model(gone, device="cpu"),
        lambda: reload_weights(loaded, gone),
        lambda: checkpoint_signature(gone),
    ):
        with pytest.raises(CheckpointVanished, match="checkpoint-900"):
            attempt()


def test_missing_or_broken_config(ckpts: dict, tmp_path: Path) -> None:
    directory = copy_checkpoint(ckpts["olmoe"][0], tmp_path / "noconfig")
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load_model(directory, device="cpu")
    (directory / "config.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_model(directory, device="cpu")


def test_no_weights(ckpts: dict, tmp_path: Path) -> None:
    directory = copy_checkpoint(ckpts["olmoe"][0], tmp_path / "noweights")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"noweights: no model\.safetensors"):
        load_model(directory, device="cpu")


@pytest.mark.parametrize(
    ("model_type", "message"),
    [("vit", "is not a causal language model"), ("frobnicator-moe", "unknown architecture")],
)
def test_unusable_architecture_is_a_model_error(
    ckpts: dict, tmp_path: Path, model_type: str, message: str
) -> None:
    directory = copy_checkpoint(ckpts["olmoe"][0], tmp_path / model_type)
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = model_type
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=rf"config\.json: .*{message}"):
        load_model(directory, device="cpu")


def test_tokenizer_from_checkpoint_else_tokenizer_dir_else_error(
    ckpts: dict, tmp_path: Path
) -> None:
    a, _ = ckpts["olmoe"]
    bare = tmp_path / "bare"
    build_tiny_model(seed=2).save_pretrained(bare)
    with pytest.raises(CheckpointError, match=r"bare: no tokenizer files .*tokenizer directory"):
        load_model(bare, device="cpu")
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        load_model(bare, device="cpu", tokenizer_dir=tmp_path)
    loaded = load_model(bare, device="cpu", tokenizer_dir=a)
    assert loaded.tokenizer.vocab_size == VOCAB


# ---------------------------------------------------------------------------------------------
# Security


def test_trust_remote_code_is_off_by_default(ckpts: dict, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    directory = copy_checkpoint(ckpts["olmoe"][0], tmp_path / "remote")
    (directory / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import OlmoeConfig as EvilConfig, OlmoeForCausalLM as EvilModel\n"
    )
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (directory / "config.json").write_text(json.dumps(config))

    # A known architecture loads with the library's own class and the shipped code never runs.
    assert type(load_model(directory, device="cpu").model).__name__ == "OlmoeForCausalLM"
    config["model_type"] = "evil_moe"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="--trust-remote-code"):
        load_model(directory, device="cpu")
    assert not marker.exists()


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickle_checkpoints_load_tensors_only(ckpts: dict, tmp_path: Path) -> None:
    a, b = ckpts["olmoe"]
    as_bin = copy_checkpoint(b, tmp_path / "bin")
    torch.save(load_file(as_bin / "model.safetensors"), as_bin / "pytorch_model.bin")
    (as_bin / "model.safetensors").unlink()
    loaded = load_model(a, device="cpu")
    reload_weights(loaded, as_bin)
    assert_same_weights(loaded.model, fresh(b))
    assert_same_weights(load_model(as_bin, device="cpu").model, fresh(b))

    marker = tmp_path / "code-ran"
    state = load_file(b / "model.safetensors")
    state["model.norm.weight"] = _RunsCodeWhenUnpickled(marker)  # type: ignore[assignment]
    torch.save(state, as_bin / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"weights_only"):
        load_model(as_bin, device="cpu")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: .*weights_only"):
        reload_weights(loaded, as_bin)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Devices and memory


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="auto, cpu, cuda, cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:1"):
            with pytest.raises(UsageError, match=r"no CUDA GPU.*--device cpu"):
                resolve_device(spec)


def test_peak_memory_on_cpu() -> None:
    assert peak_memory_bytes("cpu") > 0
    reset_peak_memory("cpu")
    start_bytes = peak_memory_bytes("cpu")
    # Above glibc's largest mmap threshold (32 MiB): fresh pages, so RSS must grow.
    block = torch.ones(64 * 2**20 // 4)
    assert block.sum() > 0
    peak_bytes = peak_memory_bytes("cpu")
    assert peak_bytes >= start_bytes
    clear_refs = Path("/proc/self/clear_refs")
    if sys.platform.startswith("linux") and os.access(clear_refs, os.W_OK):
        # The window was reset, so the new block shows up as growth of the peak.
        assert peak_bytes - start_bytes >= 32 * 2**20
