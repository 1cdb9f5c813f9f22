"""The shared tokenizer (core/data/tokenizer.py) gives exactly what open_clip's own `SimpleTokenizer` gives."""

from __future__ import annotations

import torch
from open_clip.tokenizer import SimpleTokenizer

from ablate.core.data.tokenizer import clip_tokenizer

TEXTS = [
    "a red circle on a textured background.",
    "A photo of a HEXAGON!",
    "",
    " ".join(["crescent"] * 60),  # longer than either context: truncated, EOT kept last
]


def test_each_context_length_tokenizes_as_a_fresh_open_clip_tokenizer() -> None:
    for context_length in (32, 77):
        expected = SimpleTokenizer(context_length=context_length)(TEXTS)
        assert torch.equal(clip_tokenizer(context_length)(TEXTS), expected)


def test_tokenizers_of_different_lengths_share_the_vocabulary_but_not_their_length() -> None:
    short, long = clip_tokenizer(32), clip_tokenizer(77)
    assert short.encoder is long.encoder  # parsed once
    assert short(TEXTS).shape == (len(TEXTS), 32) and long(TEXTS).shape == (len(TEXTS), 77)
    assert clip_tokenizer(32)(TEXTS).shape[1] == 32  # making the second did not change the first's length
