"""The CLIP BPE tokenizer every part of a run shares: datasets, teachers and zero-shot prompts.

open_clip's `SimpleTokenizer` reads and parses its 49k-merge vocabulary when it is constructed (0.1–0.2 s on
these CPUs), and a run built four of them (training data, held-out data, two classifiers) before and at its first
evaluation. The vocabulary is now parsed once per process; each context length gets a shallow copy sharing it
(and its memo of encoded words). The warm fork server parses it before forking, so a trial finds it ready.
"""

from __future__ import annotations

import copy
import functools

from open_clip.tokenizer import SimpleTokenizer


@functools.cache
def _vocabulary() -> SimpleTokenizer:
    return SimpleTokenizer()


def clip_tokenizer(context_length: int) -> SimpleTokenizer:
    """A tokenizer padding or truncating to `context_length`, as `SimpleTokenizer(context_length=...)`."""
    tokenizer = copy.copy(_vocabulary())
    tokenizer.context_length = context_length
    return tokenizer
