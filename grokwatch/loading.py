"""Load checkpoints safely, and swap a new checkpoint's weights into a live model in place.

A worker module (imports torch and transformers). Code shipped with a checkpoint never runs
unless the caller asks for trust_remote_code, and pickle weights load only with weights_only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import pickle
import re
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grokwatch.checkpoints import read_safetensors_header
from grokwatch.errors import CheckpointError, CheckpointVanished, ModelError, UsageError

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Keys that differ between saves of one architecture without changing what any weight means.
IGNORED_CONFIG_KEYS = frozenset({"transformers_version", "torch_dtype", "dtype", "use_cache"})
# Headroom for activations and the allocator when deciding whether weights fit on one GPU.
GPU_FILL_FRACTION = 0.9
MAX_LISTED_KEYS = 5
RESAVE = "re-save the checkpoint"

WeightFiles = dict[Path, dict[str, Any] | None]  # file -> parsed safetensors header (None: .bin)


@dataclass
class LoadedModel:
    """A model ready for probing, and what decides whether later weights can be swapped into it."""

    model: Any
    tokenizer: Any
    device: torch.device  # where inputs go (the input embeddings' device)
    signature: str  # equal signatures => reload_weights can swap weights in place
    weights_dir: Path | None = None  # whose weights it holds; None after a swap failed midway


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn auto|cpu|cuda|cuda:N into a torch device, refusing a GPU that is not there."""
    text = spec.strip().lower()
    if text in ("cpu", "auto"):
        use_gpu = text == "auto" and torch.cuda.is_available()
        return torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise UsageError(f"--device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise UsageError(
            f"--device {spec}: no CUDA GPU is visible to torch {torch.__version__}; "
            "use --device cpu, or install a CUDA build of torch"
        )
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        raise UsageError(
            f"--device {spec}: only {count} GPU(s) visible; check CUDA_VISIBLE_DEVICES"
        )
    return torch.device("cuda", index)


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory since the last reset: CUDA allocated bytes, or the process's max RSS on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(max_rss if sys.platform == "darwin" else max_rss * 1024)  # Linux counts KiB


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak-memory window (on CPU only where Linux lets the RSS peak be reset)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # "5" resets the kernel's RSS high-water mark, which ru_maxrss reports; elsewhere the CPU
    # figure stays the peak over the process's life.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _checkpoint_dir(checkpoint_dir: str | Path) -> Path:
    directory = Path(checkpoint_dir).expanduser().absolute()
    if not directory.is_dir():
        raise CheckpointVanished(
            f"{directory}: checkpoint directory does not exist (rotated away?)"
        )
    return directory


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        _raise_if_vanished(directory)
        raise CheckpointError(
            f"{path}: missing; a Hugging Face checkpoint needs config.json beside its weights "
            "(save with save_pretrained, or wait for the writer to finish)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); {RESAVE}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a JSON object; {RESAVE}")
    return config


def _raise_if_vanished(directory: Path) -> None:
    if not directory.is_dir():
        raise CheckpointVanished(f"{directory}: checkpoint directory vanished")


def _remote_class(config: dict[str, Any]) -> str | None:
    auto_map = config.get("auto_map")
    remote = auto_map.get("AutoModelForCausalLM") if isinstance(auto_map, dict) else None
    return str(remote[-1] if isinstance(remote, list) else remote) if remote else None


def _model_class_name(config: dict[str, Any]) -> str:
    """The class AutoModelForCausalLM would build for this config ('' when it cannot tell)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    builtin = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type", ""))
    return _remote_class(config) or builtin or str((config.get("architectures") or [""])[0])


def _check_architecture(config: dict[str, Any], directory: Path, trust_remote_code: bool) -> None:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path, model_type = directory / "config.json", config.get("model_type")
    remote = _remote_class(config) is not None
    if not model_type:
        raise ModelError(f"{path}: no model_type; {RESAVE} with save_pretrained")
    if trust_remote_code and remote:
        return
    if model_type not in CONFIG_MAPPING_NAMES:
        hint = (
            "it ships its own modeling code: pass --trust-remote-code if you trust it"
            if remote
            else "upgrade transformers or convert the checkpoint to a supported architecture"
        )
        raise ModelError(
            f"{path}: unknown architecture model_type={model_type!r} "
            f"(not in transformers {transformers.__version__}); {hint}"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(
            f"{path}: model_type={model_type!r} is not a causal language model; "
            "grokwatch probes decoder-only (causal LM) MoE checkpoints"
        )


def _relevant(config: Any) -> Any:
    if isinstance(config, dict):
        return {
            key: _relevant(value)
            for key, value in config.items()
            if key not in IGNORED_CONFIG_KEYS and not key.startswith("_")
        }
    return [_relevant(value) for value in config] if isinstance(config, list) else config


def _signature(config: dict[str, Any]) -> str:
    payload = {"class": _model_class_name(config), "config": _relevant(config)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_signature(checkpoint_dir: str | Path) -> str:
    """Hash of config.json (minus keys that do not change weights) and the model class."""
    return _signature(_read_config(_checkpoint_dir(checkpoint_dir)))


def _safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header and check that the file is exactly as long as it says."""
    try:
        header, problem = read_safetensors_header(str(path), path.name, path.stat().st_size)
    except FileNotFoundError:
        raise CheckpointVanished(f"{path}: weight file vanished") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: does not open ({_first_line(exc)}); {RESAVE}") from exc
    if problem is not None:
        verdict, reason = problem
        detail = reason[len(path.name) :].strip()
        hint = f"wait for the writer to finish or {RESAVE}" if verdict == "incomplete" else RESAVE
        raise CheckpointError(f"{path}: {detail}; {hint}")
    assert header is not None
    return header


def _shards_from_index(index_path: Path) -> list[Path]:
    try:
        names = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        name = type(exc).__name__
        raise CheckpointError(
            f"{index_path}: shard index does not parse ({name}); {RESAVE}"
        ) from exc
    for name in names:
        if not (index_path.parent / name).is_file():
            raise CheckpointError(
                f"{index_path}: names shard {name}, which is missing; the checkpoint is incomplete "
                f"(wait for the writer or {RESAVE})"
            )
    return [index_path.parent / name for name in names]


def _weight_files(directory: Path) -> WeightFiles:
    """The checkpoint's weight files (safetensors preferred), every header checked up front."""
    if (directory / SAFE_INDEX).is_file():
        files = _shards_from_index(directory / SAFE_INDEX)
    elif (directory / SAFE_SINGLE).is_file():
        files = [directory / SAFE_SINGLE]
    elif (directory / BIN_INDEX).is_file():
        files = _shards_from_index(directory / BIN_INDEX)
    elif (directory / BIN_SINGLE).is_file():
        files = [directory / BIN_SINGLE]
    else:
        _raise_if_vanished(directory)
        raise CheckpointError(
            f"{directory}: no {SAFE_SINGLE}, {SAFE_INDEX} or {BIN_SINGLE}; not a Hugging Face "
            "checkpoint (DeepSpeed/DCP/Megatron checkpoints need converting first)"
        )
    return {
        path: _safetensors_header(path) if path.suffix == ".safetensors" else None for path in files
    }


def _weights_name(directory: Path, files: WeightFiles) -> Path:
    """The file to name in an error about the weights as a whole: the single file or the index."""
    if len(files) == 1:
        return next(iter(files))
    return directory / (SAFE_INDEX if (directory / SAFE_INDEX).is_file() else BIN_INDEX)


def _weight_bytes(files: WeightFiles, bytes_per_float: int) -> int:
    """Size of the weights once floats are cast to bytes_per_float (file size for .bin)."""
    total = 0
    for path, header in files.items():
        if header is None:
            total += path.stat().st_size
            continue
        for key, entry in header.items():
            if key != "__metadata__":
                stored = entry["data_offsets"][1] - entry["data_offsets"][0]
                is_float = entry["dtype"].startswith(("F", "BF"))
                total += math.prod(entry["shape"]) * bytes_per_float if is_float else stored
    return total


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """Load a pickle checkpoint with weights_only=True: tensors only, never arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: pickle holds objects other than tensors and was refused (weights_only=True); "
            "convert the checkpoint to safetensors"
        ) from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot be read ({_first_line(exc)}); {RESAVE}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: does not hold a state dict; {RESAVE}")
    return state


def _examples(keys: list[str]) -> str:
    return "e.g. " + ", ".join(keys[:MAX_LISTED_KEYS])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_tokenizer(
    directory: Path, tokenizer_dir: str | Path | None, trust_remote_code: bool
) -> Any:
    from transformers import AutoTokenizer

    def has_tokenizer(path: Path) -> bool:
        return any((path / name).is_file() for name in TOKENIZER_FILES)

    wanted = f"no tokenizer files ({', '.join(TOKENIZER_FILES[:2])})"
    source = directory
    if not has_tokenizer(directory):
        if tokenizer_dir is None:
            raise CheckpointError(
                f"{directory}: {wanted}; save the tokenizer with the checkpoint "
                "(tokenizer.save_pretrained) or give a tokenizer directory"
            )
        source = Path(tokenizer_dir).expanduser().absolute()
        if not has_tokenizer(source):
            raise CheckpointError(
                f"{source}: {wanted}; point the tokenizer directory at a saved tokenizer"
            )
    try:
        return AutoTokenizer.from_pretrained(
            str(source), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise CheckpointError(f"{source}: tokenizer does not load ({_first_line(exc)})") from exc


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars: our own errors say what went wrong."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _gpu_placement(
    target: torch.device,
    spec: str,
    files: WeightFiles,
    max_memory_bytes: int | None,
    directory: Path,
) -> dict[str, Any]:
    """from_pretrained placement: one GPU when the weights fit it, else device_map='auto'."""
    weight_bytes = _weight_bytes(files, bytes_per_float=2)
    others = [i for i in range(torch.cuda.device_count()) if i != target.index]
    # "cuda:N" pins one GPU; "auto" and "cuda" may spread a large model over every visible GPU.
    indices = [target.index] if ":" in spec else [target.index, *others]
    has_accelerate = importlib.util.find_spec("accelerate") is not None
    if max_memory_bytes is None:
        budgets = {i: int(torch.cuda.mem_get_info(i)[0] * GPU_FILL_FRACTION) for i in indices}
        if weight_bytes <= budgets[target.index]:
            # Without accelerate from_pretrained takes no device_map; load_model moves the model.
            return {"device_map": {"": target}} if has_accelerate else {}
    else:
        budgets = {i: int(max_memory_bytes) for i in indices}
    if weight_bytes > sum(budgets.values()):
        raise ModelError(
            f"{directory}: the weights need {weight_bytes / 2**30:.1f} GiB in bf16 but the GPU "
            f"budget is {sum(budgets.values()) / 2**30:.1f} GiB on GPUs {indices}; "
            "raise the memory cap, free or add GPUs, or use --device cpu"
        )
    if not has_accelerate:
        raise UsageError(
            "a memory cap or a model larger than one GPU needs device_map='auto', "
            "which needs the accelerate package: pip install accelerate"
        )
    return {"device_map": "auto", "max_memory": budgets}


def load_model(
    checkpoint_dir: str | Path,
    device: str = "auto",
    trust_remote_code: bool = False,
    tokenizer_dir: str | Path | None = None,
    max_memory_bytes: int | None = None,
) -> LoadedModel:
    """Load a local causal-LM checkpoint and its tokenizer, in eval mode, on the chosen device."""
    from transformers import AutoModelForCausalLM

    directory = _checkpoint_dir(checkpoint_dir)
    config = _read_config(directory)
    _check_architecture(config, directory, trust_remote_code)
    files = _weight_files(directory)
    tokenizer = _load_tokenizer(directory, tokenizer_dir, trust_remote_code)
    target = resolve_device(device)
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": trust_remote_code,
        "weights_only": True,
        "output_loading_info": True,
        "ignore_mismatched_sizes": True,  # reported below as one line instead of a table
    }
    if target.type == "cpu":
        # The eager expert loop is ~9x faster on CPU than the default grouped_mm path.
        kwargs.update(dtype=torch.float32, experts_implementation="eager")
    else:
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        kwargs.update(_gpu_placement(target, device, files, max_memory_bytes, directory))
    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
            if "device_map" not in kwargs:
                model.to(target)
    except torch.OutOfMemoryError:
        raise
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{_weights_name(directory, files)}: pickle holds objects other than tensors and was "
            "refused (weights_only=True); convert the checkpoint to safetensors"
        ) from exc
    except Exception as exc:
        _raise_if_vanished(directory)
        raise CheckpointError(f"{directory}: model does not load ({_first_line(exc)})") from exc
    _check_loading_info(info, _weights_name(directory, files))
    return LoadedModel(
        model=model.eval(),
        tokenizer=tokenizer,
        device=model.get_input_embeddings().weight.device,
        signature=_signature(config),
        weights_dir=directory,
    )


def _check_loading_info(info: dict[str, Any], weights: Path) -> None:
    """from_pretrained only warns about these (and initialises missing weights at random)."""
    if mismatched := sorted(info.get("mismatched_keys") or []):
        key, stored, expected = mismatched[0]
        raise CheckpointError(
            f"{weights}: {key} has shape {tuple(stored)} but config.json implies "
            f"{tuple(expected)} ({len(mismatched)} mismatched); {RESAVE}"
        )
    if missing := sorted(info.get("missing_keys") or []):
        raise CheckpointError(
            f"{weights}: {len(missing)} weights missing ({_examples(missing)}); "
            "the checkpoint is incomplete or for another model"
        )
    if errors := info.get("error_msgs"):
        raise CheckpointError(f"{weights}: weights do not load ({str(errors[0]).splitlines()[0]})")


def model_summary(model: Any) -> dict[str, Any]:
    """Architecture figures for the header and the store: type, layers, experts, top-k, size."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def first(*names: str) -> Any:
        return next((getattr(text, n) for n in names if getattr(text, n, None) is not None), None)

    return {
        "model_type": config.model_type,
        "n_layers": first("num_hidden_layers", "n_layer", "num_layers"),
        "n_experts": first(
            "num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"
        ),
        "top_k": first("num_experts_per_tok", "moe_top_k", "top_k"),
        "hidden": first("hidden_size", "d_model", "n_embd"),
        "n_params": sum({id(p): p.numel() for p in model.parameters()}.values()),
    }
