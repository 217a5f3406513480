"""encode_probe: special tokens, truncation, dropped samples and completion-only loss masks."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast

from grokwatch.encoding import ALL_TOKENS, COMPLETION_ONLY, encode_probe
from grokwatch.errors import UsageError
from grokwatch.probe import Probe, ProbeSample
from grokwatch.tinymodels import build_tokenizer


@pytest.fixture(scope="module")
def char_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


def _probe(*samples: ProbeSample) -> Probe:
    return Probe(samples=tuple(samples), source="test")


def _bpe_tokenizer(single: str, pad: bool = True) -> PreTrainedTokenizerFast:
    """A BPE tokenizer over 'a', 'b', 'c' that merges 'a'+'b' into 'ab' (a seam-crossing token)."""
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "a": 3, "b": 4, "c": 5, "ab": 6}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    specials = [(t, vocab[t]) for t in ("<bos>", "<eos>") if t in single]
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    extra = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", **extra
    )


def test_all_tokens_keeps_special_tokens_and_masks_position_zero(char_tokenizer) -> None:
    texts = ["2+2=4", "def f(x): return x", "The cat sat."]
    encoded = encode_probe(char_tokenizer, _probe(*(ProbeSample(t) for t in texts)))
    assert encoded.kept == [0, 1, 2]
    assert encoded.dropped == []
    assert encoded.loss_definition == ALL_TOKENS
    assert encoded.pad_token_id == char_tokenizer.pad_token_id
    for text, ids, mask in zip(texts, encoded.input_ids, encoded.loss_masks, strict=True):
        assert ids == char_tokenizer(text)["input_ids"]
        assert ids[0] == char_tokenizer.bos_token_id
        assert mask == [False] + [True] * (len(ids) - 1)


def test_truncates_to_the_smaller_of_max_tokens_and_model_context(char_tokenizer) -> None:
    text = "abcdefghijklmnopqrstuvwxyz"
    full = char_tokenizer(text)["input_ids"]
    encoded = encode_probe(char_tokenizer, _probe(ProbeSample(text)), max_tokens=10)
    assert encoded.max_tokens == 10
    assert encoded.input_ids == [full[:10]]
    encoded = encode_probe(
        char_tokenizer, _probe(ProbeSample(text)), max_tokens=10, model_max_length=4
    )
    assert encoded.max_tokens == 4
    assert encoded.input_ids == [full[:4]]
    assert encoded.loss_masks == [[False, True, True, True]]
    # Longer than the tokenizer's own limit: cut by us, same prefix.
    encoded = encode_probe(char_tokenizer, _probe(ProbeSample(text * 30)), max_tokens=600)
    assert len(encoded.input_ids[0]) == 600


def test_samples_under_two_tokens_are_dropped_and_recorded(char_tokenizer) -> None:
    probe = _probe(ProbeSample("ok"), ProbeSample(""), ProbeSample("fine"))
    encoded = encode_probe(char_tokenizer, probe)
    assert encoded.kept == [0, 2]
    assert len(encoded.input_ids) == len(encoded.loss_masks) == 2
    (index, reason), *rest = encoded.dropped
    assert index == 1 and not rest
    assert "1 token" in reason and "\n" not in reason

    no_bos = _bpe_tokenizer("$A")
    encoded = encode_probe(no_bos, _probe(ProbeSample("c"), ProbeSample("cc")))
    assert encoded.kept == [1]
    assert encoded.dropped[0][0] == 0


def test_completion_only_counts_completion_tokens(char_tokenizer) -> None:
    probe = _probe(
        ProbeSample("Q: 2+2=? A: 4", prompt="Q: 2+2=? A: "),
        ProbeSample("plain text sample"),
    )
    encoded = encode_probe(char_tokenizer, probe)
    assert encoded.loss_definition == COMPLETION_ONLY
    ids, mask = encoded.input_ids[0], encoded.loss_masks[0]
    prompt_len = len(char_tokenizer("Q: 2+2=? A: ")["input_ids"])
    assert [i for i, counted in enumerate(mask) if counted] == [prompt_len]
    assert char_tokenizer.decode(ids[prompt_len]) == "4"
    # A sample without a prompt in a completion-only probe still counts every token.
    assert encoded.loss_masks[1] == [False] + [True] * (len(encoded.input_ids[1]) - 1)


def test_token_merged_across_the_prompt_seam_counts_as_completion() -> None:
    tokenizer = _bpe_tokenizer("<bos> $A")
    assert tokenizer("ab")["input_ids"] == [1, 6]  # 'a' (prompt) + 'b' (completion) merged
    encoded = encode_probe(tokenizer, _probe(ProbeSample("abc", prompt="a")))
    assert encoded.input_ids == [[1, 6, 5]]
    assert encoded.loss_masks == [[False, True, True]]


def test_end_of_sequence_appended_by_the_tokenizer_is_a_completion_target() -> None:
    tokenizer = _bpe_tokenizer("$A <eos>")
    encoded = encode_probe(tokenizer, _probe(ProbeSample("cb", prompt="c")))
    assert encoded.input_ids == [[5, 4, 2]]
    assert encoded.loss_masks == [[False, True, True]]


def test_completion_past_the_cut_or_empty_is_dropped(char_tokenizer) -> None:
    probe = _probe(
        ProbeSample("a long prompt here|X", prompt="a long prompt here|"),
        ProbeSample("same", prompt="same"),
        ProbeSample("hi|yo", prompt="hi|"),
    )
    encoded = encode_probe(char_tokenizer, probe, max_tokens=8)
    assert encoded.kept == [2]
    reasons = dict(encoded.dropped)
    assert "beyond the 8-token cut" in reasons[0]
    assert "no tokens" in reasons[1]


def test_pad_falls_back_to_eos_and_too_small_limit_is_a_usage_error() -> None:
    tokenizer = _bpe_tokenizer("<bos> $A", pad=False)
    encoded = encode_probe(tokenizer, _probe(ProbeSample("abc")))
    assert encoded.pad_token_id == tokenizer.eos_token_id == 2
    with pytest.raises(UsageError, match="max-tokens"):
        encode_probe(tokenizer, _probe(ProbeSample("abc")), max_tokens=1)
