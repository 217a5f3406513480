"""Swap a new checkpoint's weights into a live model, in place, and verify every one changed.

transformers 5 saves MoE experts per expert but fuses them in memory, so keys on disk differ
from `model.state_dict()`: a plain `load_state_dict(strict=False)` silently leaves the experts
stale. The swap goes through the library's own key conversion and copies into the existing
tensors (tied weights and device placement stay valid), streaming shard by shard.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grokwatch.errors import CheckpointError, ModelError
from grokwatch.loading import (
    RESAVE,
    LoadedModel,
    _checkpoint_dir,
    _examples,
    _first_line,
    _read_config,
    _signature,
    _torch_load,
    _weight_files,
    _weights_name,
)


@dataclass
class _Source:
    file_index: int
    tensor: Any  # a lazy safetensors slice, or a tensor from torch.load


def _open_sources(files: list[Path], handles: list[Any]) -> dict[str, _Source]:
    """Map every checkpoint key to a lazy reader; nothing is read from disk yet."""
    from safetensors import safe_open

    sources: dict[str, _Source] = {}
    for index, path in enumerate(files):
        if path.suffix != ".safetensors":
            handles.append(None)
            sources.update({key: _Source(index, t) for key, t in _torch_load(path).items()})
            continue
        try:
            handles.append(safe_open(str(path), framework="pt"))
        except Exception as exc:
            raise CheckpointError(f"{path}: does not open ({_first_line(exc)}); {RESAVE}") from exc
        for key in handles[-1].keys():  # noqa: SIM118 (safe_open objects are not iterable)
            sources[key] = _Source(index, handles[-1].get_slice(key))
    return sources


def _close(handles: list[Any], index: int) -> None:
    if handles[index] is not None:
        handles[index].__exit__(None, None, None)
        handles[index] = None


def _missing(targets: dict[str, torch.Tensor], covered_ids: set[int]) -> list[str]:
    # Tied weights are one tensor under two names: replacing it once covers both.
    return [name for name, tensor in targets.items() if id(tensor) not in covered_ids]


def _plan_swap(
    model: Any, targets: dict[str, torch.Tensor], sources: dict[str, _Source]
) -> tuple[dict[str, Any], dict[str, set[int]]]:
    """Group checkpoint keys into the model weights they become, with the library's own mapping."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import (
        WeightConverter,
        WeightRenaming,
        dot_natural_key,
        rename_source_key,
        spawn_materialize,
    )

    # The mapping from_pretrained uses: e.g. per-expert keys on disk -> one fused expert tensor.
    mapping = get_model_conversion_mapping(model)
    renamings = [entry for entry in mapping if isinstance(entry, WeightRenaming)]
    converters = [entry for entry in mapping if isinstance(entry, WeightConverter)]
    by_pattern = {pattern: conv for conv in converters for pattern in conv.source_patterns}
    prefix = model.base_model_prefix
    plans: dict[str, Any] = {}
    plan_files: dict[str, set[int]] = {}
    # Natural key order puts experts 0..N-1 in order, which the merge operations rely on.
    for key in sorted(sources, key=dot_natural_key):
        name, pattern = rename_source_key(key, renamings, converters, prefix, targets)
        if name not in targets and key in targets:
            name, pattern = rename_source_key(key, [], [], prefix, targets)
        if name not in targets:
            continue  # e.g. a buffer older saves kept; the caller checks that nothing is missing
        pattern = pattern or key
        if name not in plans:
            # One converter per target: it collects that target's source tensors.
            converter = by_pattern.get(pattern)
            plans[name] = copy.deepcopy(converter) if converter else WeightRenaming(key, name)
        ref = targets[name]
        # Read only at convert time, straight to the parameter's device and dtype.
        reader = spawn_materialize(None, sources[key].tensor, ref.device, ref.dtype)
        plans[name].add_tensor(name, key, pattern, reader)
        plan_files.setdefault(name, set()).add(sources[key].file_index)
    return plans, plan_files


def _target_names(first: str, plan: Any) -> list[str]:
    """Every model key a plan writes (several for one-to-many converters, e.g. qkv -> q, k, v)."""
    patterns = list(getattr(plan, "target_patterns", [first]))
    return [first.replace(patterns[0], pattern) for pattern in patterns]


def reload_weights(loaded: LoadedModel, checkpoint_dir: str | Path) -> None:
    """Copy a same-signature checkpoint's weights into the live model in place, verifying all."""
    directory = _checkpoint_dir(checkpoint_dir)
    if _signature(_read_config(directory)) != loaded.signature:
        raise CheckpointError(
            f"{directory / 'config.json'}: config differs from the loaded model's; "
            "load this checkpoint with load_model instead of swapping weights"
        )
    files = list(_weight_files(directory))
    model = loaded.model
    targets = model.state_dict(keep_vars=True)  # persistent parameters and buffers
    if getattr(model, "hf_quantizer", None) is not None or any(
        tensor.device.type == "meta" for tensor in targets.values()
    ):
        raise ModelError(
            f"{directory}: quantized or offloaded models cannot swap weights; use load_model"
        )
    handles: list[Any] = []
    try:
        plans, plan_files = _plan_swap(model, targets, _open_sources(files, handles))
        planned = {
            id(targets[n]) for f, p in plans.items() for n in _target_names(f, p) if n in targets
        }
        if missing := _missing(targets, planned):
            raise CheckpointError(
                f"{_weights_name(directory, dict.fromkeys(files))}: {len(missing)} model weights "
                f"have no source ({_examples(missing)}); the checkpoint is "
                "incomplete or for another model"
            )
        loaded.weights_dir = None  # from here a failure leaves a mix of two checkpoints
        written = _apply_plans(model, targets, plans, plan_files, files, handles)
    finally:
        for index in range(len(handles)):
            _close(handles, index)
    if missing := _missing(targets, written):
        raise CheckpointError(
            f"{directory}: {len(missing)} model weights were not replaced "
            f"({_examples(missing)}); load the checkpoint with load_model"
        )
    loaded.weights_dir = directory


def _apply_plans(
    model: Any,
    targets: dict[str, torch.Tensor],
    plans: dict[str, Any],
    plan_files: dict[str, set[int]],
    files: list[Path],
    handles: list[Any],
) -> set[int]:
    """Convert each planned weight, copy it into the model's tensor, and return the ids written."""
    # Shard by shard: a weight goes once its last file is reached, and each file is closed (its
    # mapped pages released) after the last weight that reads it, so RSS stays near one shard.
    order = sorted(plans, key=lambda name: max(plan_files[name]))
    last_use = {
        index: position for position, name in enumerate(order) for index in plan_files[name]
    }
    written: set[int] = set()
    for position, first in enumerate(order):
        path = files[min(plan_files[first])]
        try:
            realized = plans.pop(first).convert(first, model=model, config=model.config)
        except Exception as exc:
            raise CheckpointError(
                f"{path}: cannot convert weights for {first} ({_first_line(exc)})"
            ) from exc
        for name, value in realized.items():
            tensor = value[0] if isinstance(value, list) else value
            if (ref := targets.get(name)) is None:
                continue
            if tensor.shape != ref.shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {tuple(tensor.shape)} but the model expects "
                    f"{tuple(ref.shape)}; the weights do not match config.json ({RESAVE})"
                )
            with torch.no_grad():
                ref.copy_(tensor)
            written.add(id(ref))
        for index in [i for i, last in last_use.items() if last == position]:
            _close(handles, index)
    return written
