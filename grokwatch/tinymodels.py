"""Tiny MoE checkpoints built from a config, with a character-level tokenizer.

Used by the tests, the benchmarks and the demo: nothing is ever downloaded from a hub.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# Every printable ASCII character is one token, so any probe text tokenizes without <unk>.
CHARACTERS = [c for c in string.printable if c not in "\x0b\x0c\r"]


def word_level_tokenizer(vocab: dict[str, int], pre_tokenizer: Any, model_max_length: int) -> Any:
    """Wrap a word-level vocabulary (with SPECIAL_TOKENS) as a fast tokenizer that adds <bos>."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizer
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def build_tokenizer(model_max_length: int = 512) -> Any:
    """Return a character-level PreTrainedTokenizerFast that prepends <bos> like real LMs do."""
    from tokenizers import Regex, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    # "[\s\S]" rather than ".": every character, newlines included, is its own token.
    split = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    return word_level_tokenizer(vocab, split, model_max_length)


def tiny_olmoe_config(
    num_layers: int = 4,
    hidden_size: int = 64,
    num_experts: int = 8,
    top_k: int = 2,
    vocab_size: int | None = None,
    max_position_embeddings: int = 512,
) -> Any:
    """Return a small OlmoeConfig (4 layers, hidden 64, 8 experts, top-2 by default)."""
    from transformers import OlmoeConfig

    return OlmoeConfig(
        vocab_size=vocab_size or len(SPECIAL_TOKENS) + len(CHARACTERS),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def build_tiny_model(config: Any | None = None, seed: int = 0) -> Any:
    """Instantiate a randomly initialised causal LM from a config (tiny OLMoE by default)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config or tiny_olmoe_config())
    return model.eval()


def save_tiny_checkpoint(
    directory: str | Path,
    config: Any | None = None,
    seed: int = 0,
    model: Any | None = None,
) -> Path:
    """Write a complete save_pretrained checkpoint (safetensors + tokenizer) and return its path."""
    from transformers.utils import logging as hf_logging

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else build_tiny_model(config, seed)
    # A progress bar per tiny shard only clutters test and bench output.
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(directory)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    build_tokenizer().save_pretrained(directory)
    return directory


# Architectures `tiny_config` can build; each is a real transformers model type.
TINY_ARCHITECTURES = (
    "olmoe",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v3",
    "granitemoe",
    "phimoe",
    "gpt_oss",
    "jetmoe",
)


def tiny_config(arch: str, experts_implementation: str | None = "eager") -> Any:
    """Return a tiny config (hidden 32, 3-4 layers, 8 experts) of a transformers MoE architecture.

    Every config shares the character tokenizer's vocabulary. `experts_implementation="eager"`
    is set because CPU runs should use it (design.md); transformers does not save it to disk.
    """
    from transformers import AutoConfig

    common: dict[str, Any] = {
        "vocab_size": len(SPECIAL_TOKENS) + len(CHARACTERS),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }
    experts = {"num_local_experts": 8, "num_experts_per_tok": 2}
    extra: dict[str, dict[str, Any]] = {
        "olmoe": {"num_experts": 8, "num_experts_per_tok": 2},
        "mixtral": experts,
        # Layer 1 is dense, so the MoE layers are 0, 2, 3.
        "qwen2_moe": {
            "num_hidden_layers": 4,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 64,
            "mlp_only_layers": [1],
        },
        "qwen3_moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
        # First layer dense; two groups of four experts, one group kept per token.
        "deepseek_v3": {
            "num_hidden_layers": 4,
            "num_key_value_heads": 4,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_group": 2,
            "topk_group": 1,
            "first_k_dense_replace": 1,
            "moe_intermediate_size": 32,
            "n_shared_experts": 1,
            "q_lora_rank": 16,
            "kv_lora_rank": 16,
            "qk_rope_head_dim": 4,
            "qk_nope_head_dim": 4,
            "v_head_dim": 8,
        },
        "granitemoe": experts,
        "phimoe": experts,
        "gpt_oss": {**experts, "head_dim": 8, "sliding_window": 16},
        "jetmoe": {
            **experts,
            "kv_channels": 8,
            "num_key_value_heads": 2,
            "activation_function": "silu",
        },
    }
    if arch not in extra:
        raise ValueError(f"unknown tiny architecture {arch!r}; pick one of {TINY_ARCHITECTURES}")
    kwargs = {**common, **extra[arch]}
    if arch == "jetmoe":
        # JetMoE derives its head count from num_key_value_heads * num_experts_per_tok.
        kwargs.pop("num_attention_heads")
    if experts_implementation is not None:
        kwargs["experts_implementation"] = experts_implementation
    return AutoConfig.for_model(arch, **kwargs)
