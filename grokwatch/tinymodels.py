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


def build_tokenizer(model_max_length: int = 512) -> Any:
    """Return a character-level PreTrainedTokenizerFast that prepends <bos> like real LMs do."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
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
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else build_tiny_model(config, seed)
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory
