"""Tokenizing a probe identically at every checkpoint: truncation, dropped samples, loss masks.

Each sample is tokenized with the tokenizer's own special tokens (`tokenizer(text)`), then cut to
the first `max_tokens` tokens (the model context if smaller). Cutting the token list, rather than
asking the tokenizer to truncate, keeps the text a contiguous window like a pretraining chunk:
the tokenizer's truncation would re-append an end-of-sequence token after a cut text.

Loss targets: token t is a *target* when the loss counts the prediction of token t from the
tokens before it, so position 0 never is. Without a prompt every later token is a target. With a
prompt (completion-only loss) the targets are the completion tokens: the prompt is tokenized on
its own with the same call, and the boundary is the length of the longest common prefix of the
prompt's ids and the full text's ids. A token that merges across the prompt/completion seam (BPE)
differs from the prompt's last token, so it counts as completion, as does anything the tokenizer
appends after the text (an end-of-sequence token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grokwatch.errors import UsageError
from grokwatch.probe import Probe

ALL_TOKENS = "all-tokens"
COMPLETION_ONLY = "completion-only"
MIN_TOKENS = 2  # one input and one target: the least a next-token loss needs


@dataclass(frozen=True)
class EncodedProbe:
    """A probe tokenized and truncated for one tokenizer, with loss masks and dropped samples."""

    input_ids: list[list[int]]  # one list per kept sample, truncated
    loss_masks: list[list[bool]]  # per kept sample: True where the token is a counted target
    kept: list[int]  # probe sample index of each kept row
    dropped: list[tuple[int, str]]  # (probe sample index, one-line reason)
    max_tokens: int  # effective truncation length used
    loss_definition: str  # ALL_TOKENS or COMPLETION_ONLY (if any probe sample has a prompt)
    pad_token_id: int = 0  # tokenizer's pad token, else its EOS token, else 0

    @property
    def n_kept(self) -> int:
        """Number of samples that will go through the model."""
        return len(self.input_ids)


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    # verbose=False: texts longer than the tokenizer's limit are cut by us, not warned about.
    return list(tokenizer(text, verbose=False)["input_ids"])


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _pad_token_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0


def encode_probe(
    tokenizer: Any,
    probe: Probe,
    max_tokens: int = 2048,
    model_max_length: int | None = None,
) -> EncodedProbe:
    """Tokenize and truncate every probe sample, build loss masks and record dropped samples."""
    limit = max_tokens if model_max_length is None else min(max_tokens, model_max_length)
    if limit < MIN_TOKENS:
        raise UsageError(
            f"max tokens is {limit} (max_tokens={max_tokens}, model context={model_max_length}); "
            f"set --max-tokens to {MIN_TOKENS} or more"
        )
    completion_only = any(s.prompt is not None for s in probe.samples)
    input_ids: list[list[int]] = []
    loss_masks: list[list[bool]] = []
    kept: list[int] = []
    dropped: list[tuple[int, str]] = []
    for index, sample in enumerate(probe.samples):
        full = _token_ids(tokenizer, sample.text)
        ids = full[:limit]
        if len(ids) < MIN_TOKENS:
            dropped.append((index, f"{len(ids)} token(s) after tokenization; need {MIN_TOKENS}"))
            continue
        if sample.prompt is None:
            first_target = 1
        else:
            boundary = _common_prefix_len(_token_ids(tokenizer, sample.prompt), full)
            if boundary >= len(full):
                dropped.append((index, "completion adds no tokens to the prompt"))
                continue
            if boundary >= limit:
                dropped.append(
                    (index, f"completion starts at token {boundary}, beyond the {limit}-token cut")
                )
                continue
            first_target = max(1, boundary)
        mask = [position >= first_target for position in range(len(ids))]
        input_ids.append(ids)
        loss_masks.append(mask)
        kept.append(index)
    return EncodedProbe(
        input_ids=input_ids,
        loss_masks=loss_masks,
        kept=kept,
        dropped=dropped,
        max_tokens=limit,
        loss_definition=COMPLETION_ONLY if completion_only else ALL_TOKENS,
        pad_token_id=_pad_token_id(tokenizer),
    )
