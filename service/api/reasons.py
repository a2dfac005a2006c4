"""Every ``ErrorInfo.reason`` Loom emits, found in its source, with its gRPC
status code: the table in the README is written from here.

A reason is emitted where a domain error is built: ``FailedPrecondition(...,
reason="RUN_EXPIRED")``, or the class's own reason (``ThreadBusy(...)`` is
``THREAD_BUSY``), or, for ``NotFound("thread", ...)``, the kind's
(``THREAD_NOT_FOUND``). The scan reads every module of ``service/`` with
``ast``, so a reason added anywhere shows up without a list to keep by hand;
only its one-line explanation (``WHEN``) is written here. The HTTP door
(``service/http``) is not scanned: it reports errors in OpenAI's shape, with
codes of its own (the README's section on OpenAI's SDKs lists them).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from pathlib import Path

import grpc

import service
from service.api.errors import status_code
from service.core import errors

__all__ = ["WHEN", "Reason", "render", "scan", "update_readme"]

START = "<!-- error-reasons:start (python -m service error-reasons --write README.md) -->"
END = "<!-- error-reasons:end -->"

# What each reason means to a caller, and what to do about it.
WHEN: dict[str, str] = {
    "INVALID_ARGUMENT": "the request is malformed (the message and `field` say which part)",
    "REQUEST_ID_REUSED": "a `request_id` sent again with a different request",
    "ASSISTANT_NOT_FOUND": "no such assistant for this tenant (metadata `assistant_id`)",
    "THREAD_NOT_FOUND": "no such thread for this tenant (metadata `thread_id`)",
    "RUN_NOT_FOUND": "no such run waiting for tool outputs on the thread (metadata `run_id`)",
    "MEMORY_NOT_FOUND": "no such memory for this tenant (metadata `memory_id`)",
    "OPERATION_NOT_FOUND": "no such memory operation for this tenant (metadata `operation_id`)",
    "API_KEY_MISSING": "no `x-api-key` metadata",
    "API_KEY_INVALID": "the `x-api-key` is unknown or revoked",
    "THREAD_BUSY": "another reply (or an AddMessages or UpdateThread), or a run waiting for "
    "tool outputs, holds the thread, or a ForkThread would copy a reply still streaming "
    "(metadata `thread_id`); retry when it has completed",
    "REPLY_INTERRUPTED": "a newer message sent with `on_busy` INTERRUPT stopped this reply; "
    "what arrived is stored INCOMPLETE and the newer message is answered with it in history",
    "LEASE_LOST": "the replica serving the call lost the thread's lease to another (it "
    "stopped writing at once); retry, and another replica serves it",
    "REQUEST_IN_PROGRESS": "the first attempt with this `request_id` was still running after a "
    "repeat waited 5 minutes for its result (a repeat otherwise waits and replays it); retry "
    "later",
    "MODEL_NOT_CONFIGURED": "Loom has no model endpoint (`LOOM_LLM_BASE_URL`)",
    "MODEL_AUTH_FAILED": "the model endpoint refused Loom's key (`LOOM_LLM_API_KEY`)",
    "MODEL_NOT_FOUND": "the model endpoint does not serve the model asked for",
    "MODEL_REJECTED_REQUEST": "the model endpoint refused the request (HTTP 4xx)",
    "RUN_EXPIRED": "the run waited for tool outputs longer than `LOOM_RUN_EXPIRY_SECONDS`",
    "REQUEST_FAILED": "the first attempt with this `request_id` failed and the thread has "
    "moved on; send again with a new `request_id`",
    "EMBEDDING_MODEL_UNAVAILABLE": "the memory embedding model cannot be loaded or used",
    "EMBEDDING_MODEL_MISMATCH": "the assistant's memories were embedded with another model; "
    "run `python -m service memory reindex`",
    "RATE_LIMITED": "the API key is over its call rate (`LOOM_RATE_LIMIT_PER_KEY`, or its "
    "tenant's override); a `RetryInfo` says when a call is admitted again",
    "TOO_MANY_STREAMS": "the tenant has its most reply streams open "
    "(`LOOM_MAX_STREAMS_PER_TENANT`, or its override); a `RetryInfo` suggests a back-off",
    "THREAD_QUEUE_FULL": "`LOOM_MAX_QUEUED_PER_THREAD` messages sent with `on_busy` ENQUEUE "
    "or INTERRUPT already wait for the thread (metadata `thread_id`); a `RetryInfo` suggests "
    "a back-off",
    "MODEL_RATE_LIMITED": "the model endpoint kept rate-limiting after retries; retry later",
    "TOOL_ROUNDS_EXCEEDED": "the model asked for tools more than `LOOM_MAX_TOOL_ROUNDS` "
    "times in one reply",
    "MODEL_UNAVAILABLE": "the model endpoint failed (HTTP 5xx) after retries",
    "MODEL_TIMEOUT": "the model endpoint did not answer within `LOOM_LLM_TIMEOUT`",
    "MODEL_STREAM_BROKEN": "the model endpoint broke off mid-reply (the part received is "
    "stored `FAILED`)",
    "MODEL_UNREACHABLE": "the model endpoint could not be reached after retries",
    "DATABASE_UNAVAILABLE": "the database is unreachable or busy; retry later (a reply it cut "
    "short is stored with what the caller received once it is back, metadata `message_id`)",
    "SERVER_SHUTTING_DOWN": "the replica serving the call is shutting down and cut the reply "
    "short (stored `INCOMPLETE` with what the caller received); send again, another replica "
    "serves it",
    "UNAVAILABLE": "the memory store (Chroma) or the embedding endpoint cannot be reached; "
    "retry later",
    "INTERNAL": "an unexpected failure (the detail is in Loom's log, never in the reply)",
}


@dataclass(slots=True)
class Reason:
    """One reason, the status codes it comes with, and where it is built."""

    reason: str
    codes: set[grpc.StatusCode] = field(default_factory=set)
    sites: list[str] = field(default_factory=list)


class ScanError(Exception):
    """A domain error whose reason cannot be read from the source."""


def _error_classes() -> dict[str, type[errors.LoomError]]:
    """Every LoomError subclass in ``service``, by class name."""
    for module in pkgutil.walk_packages(service.__path__, "service."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: dict[str, type[errors.LoomError]] = {}
    stack: list[type[errors.LoomError]] = [errors.LoomError]
    while stack:
        kind = stack.pop()
        if found.setdefault(kind.__name__, kind) is not kind:
            raise ScanError(f"two error classes are named {kind.__name__}")
        stack.extend(kind.__subclasses__())
    return found


def _reason_of(call: ast.Call, kind: type[errors.LoomError], site: str) -> str:
    for keyword in call.keywords:
        if keyword.arg == "reason":
            if isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str):
                return keyword.value.value
            raise ScanError(f"{site}: reason= must be a string literal to be listed")
    if issubclass(kind, errors.NotFound):
        first = call.args[0] if call.args else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return f"{first.value.upper()}_NOT_FOUND"
        raise ScanError(f"{site}: NotFound's kind must be a string literal to be listed")
    return kind.reason


def scan(root: Path | None = None) -> dict[str, Reason]:
    """Every reason built in the modules under ``root`` (``service/``).

    Raises:
        ScanError: a reason (or NotFound kind) that is not a literal.
    """
    root = root or Path(service.__file__).parent
    classes = _error_classes()
    found: dict[str, Reason] = {}
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "http":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            kind = classes.get(name or "")
            if kind is None:
                continue
            site = f"{path.relative_to(root.parent)}:{node.lineno}"
            reason = _reason_of(node, kind, site)
            entry = found.setdefault(reason, Reason(reason))
            entry.codes.add(status_code(kind))
            entry.sites.append(site)
    for entry in found.values():
        entry.sites.sort()
    return found


def render(reasons: dict[str, Reason]) -> str:
    """The Markdown table, by status code (in gRPC's order), then reason.

    Raises:
        KeyError: a reason with no line in ``WHEN``.
    """

    def numbers(r: Reason) -> list[int]:
        return sorted(code.value[0] for code in r.codes)

    lines = ["| code | reason | when |", "|---|---|---|"]
    for r in sorted(reasons.values(), key=lambda r: (numbers(r), r.reason)):
        if r.reason not in WHEN:
            raise KeyError(f"{r.reason} ({r.sites[0]}) has no line in WHEN in {__name__}")
        codes = ", ".join(f"`{c.name}`" for c in sorted(r.codes, key=lambda c: c.value[0]))
        lines.append(f"| {codes} | `{r.reason}` | {WHEN[r.reason]} |")
    return "\n".join(lines) + "\n"


def update_readme(text: str, table: str) -> str:
    """``text`` with the table between the markers replaced.

    Raises:
        ValueError: the markers are missing.
    """
    pattern = re.compile(re.escape(START) + r"\n.*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"the markers {START!r} and {END!r} are missing")
    return pattern.sub(lambda _: f"{START}\n{table}{END}", text, count=1)
