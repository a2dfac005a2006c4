"""Offline token counting and per-model context budgets.

Text is counted with OpenAI's o200k_base encoding (bundled by the bpe-openai
package, so nothing is downloaded). For models that tokenise differently the
count is scaled by a per-model ratio, learnt from the input tokens the
endpoint reports for each reply, starting from a conservative 1.15 for
models of unknown families. The ratio used is the largest of the recent
observations (clamped to 0.5-3), not their mean: text whose ratio is above
the average must still fit.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque

import bpe_openai

from service.llm.windows import lookup_window

__all__ = ["TokenBudgets"]

log = logging.getLogger(__name__)

_EXACT_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4")
_UNKNOWN_RATIO = 1.15
_OBSERVATIONS = 32
_MESSAGE_OVERHEAD = 4
_PROMPT_OVERHEAD = 3


class TokenBudgets:
    """Implements ``service.core.ports.TokenBudgets``."""

    def __init__(self, *, default_window: int = 8192, window_override: int | None = None) -> None:
        self._encoding = bpe_openai.get_encoding("o200k_base")
        self._default_window = default_window
        self._override = window_override
        self._ratios: dict[str, deque[float]] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        """Tokens of ``text`` in the base encoding. Long texts that recur on
        every request (instructions, summaries) are counted once."""
        if not text:
            return 0
        if len(text) < 256:
            return len(self._encoding.encode_ordinary(text))
        return self._count_long(text)

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - one instance per process
    def _count_long(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text))

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
            self._ratios.setdefault(model, deque(maxlen=_OBSERVATIONS)).append(observed)

    def context_window(self, model: str, assistant_window: int = 0) -> int:
        """The window to plan for: the assistant's setting, else
        ``LOOM_CONTEXT_WINDOW``, else the registry, else a conservative
        default (with a warning, once per model)."""
        if assistant_window > 0:
            return assistant_window
        if self._override:
            return self._override
        known = lookup_window(model)
        if known is not None:
            return known
        if model not in self._warned:
            self._warned.add(model)
            log.warning(
                "context window of model %r is unknown; planning for %d tokens (set the "
                "assistant's context_window or LOOM_CONTEXT_WINDOW)",
                model,
                self._default_window,
            )
        return self._default_window
