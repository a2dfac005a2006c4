"""The prompt of one reply, fitted to the context window of the model that
answers (the policy is ``service.core.budget.fit``)."""

from __future__ import annotations

import logging

from service.core.budget import Fitted, fit, plan_budget, token_limit
from service.core.models import Assistant, ContextStrategy, Message, Recalled, Thread
from service.core.ports import TokenCounter
from service.telemetry import annotate

__all__ = ["fit_prompt", "prompt_limit"]

log = logging.getLogger(__name__)


async def fit_prompt(
    counter: TokenCounter,
    *,
    assistant: Assistant,
    thread: Thread,
    user: Message,
    reply: Message,
    recalled: list[Recalled],
    instructions: str = "",
) -> Fitted:
    """The prompt for ``reply``: the assistant's instructions (then the
    run's own ``instructions``, if any), recalled
    memories, the summary (assistants that summarise), as much history as
    fits, and the user's message. Leaving messages out is logged and noted
    on the current span."""
    window = counter.context_window(reply.model, assistant.context_window)
    summarize = assistant.context_strategy is ContextStrategy.SUMMARIZE
    fitted = await fit(
        instructions="\n\n".join(p for p in (assistant.instructions, instructions) if p),
        memories=recalled,
        summary=thread.summary if summarize else None,
        history=thread.context,
        new=user.entry(),
        budget=plan_budget(window),
        ratio=counter.ratio(reply.model),
        counter=counter,
    )
    if fitted.dropped:
        annotate(
            prompt_dropped_messages=fitted.dropped,
            prompt_summary_ready=thread.summary is not None,
        )
        log.info(
            "prompt for %s left out the %d oldest messages of %s to fit %d tokens",
            reply.message_id,
            fitted.dropped,
            thread.thread_id,
            window,
        )
    return fitted


def prompt_limit(counter: TokenCounter, assistant: Assistant, model: str) -> int:
    """The base tokens a prompt for ``model`` may use under ``assistant``:
    the limit ``fit_prompt`` fits to, for work that plans without a prompt
    (a summary fold after messages were added without a reply)."""
    window = counter.context_window(model, assistant.context_window)
    return token_limit(plan_budget(window), counter.ratio(model))
