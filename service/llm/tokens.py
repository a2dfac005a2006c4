"""Offline token counting and per-model context budgets: ``TokenBudgets``,
the ``service.core.ports.TokenCounter`` the reply loop plans prompts with.

Text is counted with OpenAI's o200k_base encoding (bundled by the bpe-openai
package, so nothing is downloaded). For models that tokenise differently the
count is scaled by a per-model ratio, learnt from the input tokens the
endpoint reports for each reply, starting from a conservative 1.15 for
models of unknown families. The ratio used is the largest of the recent
observations (clamped to 0.5-3), not their mean: text whose ratio is above
the average must still fit.

Counting 100,000 characters takes some milliseconds of prose and tens of
CJK, and the tokenizer holds the GIL while it runs, so a worker thread would
not spare the event loop: ``count_async`` counts a long text in slices with
the loop running between them instead (``python -m bench.tokens`` measures
both). Counts of long texts are kept by digest, so the instructions and
summaries that recur on every request are counted once. What is kept per
text and per model name (which callers choose) is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import TypeVar

import bpe_openai

from service.llm.windows import lookup_window

__all__ = ["TokenBudgets"]

log = logging.getLogger(__name__)

_EXACT_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4")
_UNKNOWN_RATIO = 1.15
_OBSERVATIONS = 32
_MESSAGE_OVERHEAD = 4
_PROMPT_OVERHEAD = 3
_SHORT = 256  # characters: shorter texts are counted afresh, cheaper than a digest
SLICE_CHARS = 4096  # characters counted between two turns of the event loop
_KEPT_COUNTS = 4096  # counts of long texts kept (a digest and an int each)
_KEPT_MODELS = 512  # models whose ratios, and whose unknown windows, are remembered
# Where a slice may end: after a letter or digit, before a space, a line
# break, a punctuation mark or a symbol (apostrophes aside: "'s" joins the
# word before it). o200k_base's pre-tokenizer ends its piece there, since no
# piece runs from a letter or digit into such a character, so slices cut
# there count the same as the whole text. A run of letters with none of
# these (CJK without punctuation) is one piece and is counted in one go.
_CUT = re.compile(r"(?<=[^\W_])[^\w'\u2019]")
_CUT_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc"})

K = TypeVar("K")
V = TypeVar("V")


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _next_cut(text: str, start: int) -> int | None:
    """The first place at or after ``start`` where a slice may end."""
    for found in _CUT.finditer(text, start):
        category = unicodedata.category(text[found.start()])
        if category[0] in "PS" or category in _CUT_CATEGORIES:  # not a combining mark
            return found.start()
    return None


def _slices(text: str) -> Iterator[str]:
    """``text`` in consecutive slices of about ``SLICE_CHARS`` characters
    or more, each cut where a slice may end (``_CUT``)."""
    start = 0
    while len(text) - start > SLICE_CHARS:
        cut = _next_cut(text, start + SLICE_CHARS)
        if cut is None:
            break
        yield text[start:cut]
        start = cut
    yield text[start:]


def _keep(kept: OrderedDict[K, V], key: K, value: V, most: int) -> None:
    """Put ``key`` in ``kept`` as the newest entry, dropping the oldest
    beyond ``most``."""
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > most:
        kept.popitem(last=False)


class TokenBudgets:
    """Implements ``service.core.ports.TokenCounter`` with o200k_base."""

    def __init__(self, *, default_window: int = 8192, window_override: int | None = None) -> None:
        self._encoding = bpe_openai.get_encoding("o200k_base")
        self._default_window = default_window
        self._override = window_override
        self._counts: OrderedDict[bytes, int] = OrderedDict()
        self._ratios: OrderedDict[str, deque[float]] = OrderedDict()
        self._warned: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        """Tokens of ``text`` in the base encoding, counted in one go (on the
        event loop, ``count_async`` for texts that may be long)."""
        if len(text) < _SHORT:
            return self._encode(text)
        key = _digest(text)
        found = self._kept(key)
        if found is None:
            found = self._encode(text)
            self._keep_count(key, found)
        return found

    async def count_async(self, text: str) -> int:
        """Tokens of ``text``, as ``count``; a long text is counted in slices
        with the event loop running between them."""
        if len(text) <= SLICE_CHARS:
            return self.count(text)
        key = _digest(text)
        found = self._kept(key)
        if found is None:
            found = 0
            for piece in _slices(text):
                found += self._encode(piece)
                await asyncio.sleep(0)
            self._keep_count(key, found)
        return found

    def _encode(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text)) if text else 0

    def _kept(self, key: bytes) -> int | None:
        with self._lock:
            found = self._counts.get(key)
            if found is not None:
                self._counts.move_to_end(key)
            return found

    def _keep_count(self, key: bytes, tokens: int) -> None:
        with self._lock:
            _keep(self._counts, key, tokens, _KEPT_COUNTS)

    def message_overhead(self) -> int:
        """Tokens each chat message costs beyond its text."""
        return _MESSAGE_OVERHEAD

    def prompt_overhead(self) -> int:
        """Tokens a whole prompt costs beyond its messages."""
        return _PROMPT_OVERHEAD

    def ratio(self, model: str) -> float:
        """How many of ``model``'s tokens one base token is worth."""
        with self._lock:
            seen = self._ratios.get(model)
            if seen:
                return max(seen)
        name = model.lower().rsplit("/", 1)[-1]
        return 1.0 if name.startswith(_EXACT_PREFIXES) else _UNKNOWN_RATIO

    def calibrate(self, model: str, base_tokens: int, reported_tokens: int) -> None:
        """Learn from a reply: the prompt counted ``base_tokens`` here and the
        endpoint reported ``reported_tokens``."""
        if base_tokens < 16 or reported_tokens <= 0:
            return
        observed = min(max(reported_tokens / base_tokens, 0.5), 3.0)
        with self._lock:
            seen = self._ratios.get(model) or deque(maxlen=_OBSERVATIONS)
            seen.append(observed)
            _keep(self._ratios, model, seen, _KEPT_MODELS)

    def context_window(self, model: str, assistant_window: int = 0) -> int:
        """The window to plan for: the assistant's setting, else
        ``LOOM_CONTEXT_WINDOW``, else the registry, else a conservative
        default (with a warning, once per model among the last few hundred
        unknown ones)."""
        if assistant_window > 0:
            return assistant_window
        if self._override:
            return self._override
        known = lookup_window(model)
        if known is not None:
            return known
        with self._lock:
            first = model not in self._warned
            _keep(self._warned, model, None, _KEPT_MODELS)
        if first:
            log.warning(
                "context window of model %r is unknown; planning for %d tokens (set the "
                "assistant's context_window or LOOM_CONTEXT_WINDOW)",
                model,
                self._default_window,
            )
        return self._default_window
