"""The Python client's exceptions: one class for every reason the service
sends (found in its source, so a new reason without a class fails here), a
status-code class for reasons it does not know, and the status details read
as the service writes them."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from loom_client import errors
from loom_client._status import parse_status_details
from service.api.errors import status_details
from service.core import errors as domain

SERVICE = Path(__file__).resolve().parents[1] / "service"


def _reason(node: ast.AST) -> str | None:
    """The reason a syntax node sets: a ``reason=`` argument, a ``reason =``
    class attribute, or the ``KIND_NOT_FOUND`` of ``NotFound("kind", ...)``."""
    value: ast.expr | None = None
    if isinstance(node, ast.keyword) and node.arg == "reason":
        value = node.value
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "reason" for t in node.targets
    ):
        value = node.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "NotFound"
    ):
        kind = node.args[0] if node.args else None
        if isinstance(kind, ast.Constant):
            return f"{str(kind.value).upper()}_NOT_FOUND"
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    return None


def _reasons_in_service() -> set[str]:
    """Every ErrorInfo reason the service's gRPC door can send (the HTTP
    door, service/http, answers OpenAI's clients, never this one)."""
    return {
        reason
        for path in SERVICE.rglob("*.py")
        if path.relative_to(SERVICE).parts[0] != "http"
        for node in ast.walk(ast.parse(path.read_text()))
        if (reason := _reason(node)) is not None
    }


def test_every_reason_the_service_sends_has_its_own_class_or_its_codes() -> None:
    reasons = _reasons_in_service()
    assert {"THREAD_BUSY", "THREAD_NOT_FOUND", "DATABASE_UNAVAILABLE"} <= reasons
    # Reasons that only repeat a status code's name (and the base class's
    # LOOM_ERROR) are served by the class of that code.
    generic = {code.name for code in grpc.StatusCode} | {"LOOM_ERROR"}
    missing = sorted(
        r for r in reasons - generic if errors.error_class(grpc.StatusCode.UNKNOWN, r).reason != r
    )
    assert not missing, f"loom_client.errors has no class for {missing}"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (domain.ThreadBusy("thread_1"), errors.ThreadBusy),
        (domain.NotFound("assistant", "asst_1"), errors.AssistantNotFound),
        (domain.InvalidArgument("bad", field="content"), errors.InvalidArgument),
        (domain.Unavailable("down", reason="DATABASE_UNAVAILABLE"), errors.DatabaseUnavailable),
        (domain.ResourceExhausted("slow down"), errors.ModelRateLimited),
        (domain.NotFound("galaxy", "g1"), errors.NotFound),  # a reason the client lacks
        (domain.Aborted("conflict", reason="SOMETHING_NEW"), errors.Aborted),
    ],
)
def test_status_details_the_service_writes_become_the_right_exception(
    error: domain.LoomError, expected: type[errors.LoomError]
) -> None:
    from service.api.errors import classify

    code, _ = classify(error)
    raised = errors.error_from_status(
        code, error.message, parse_status_details(status_details(code, error))
    )
    assert type(raised) is expected
    assert isinstance(raised, errors.LoomError)
    assert raised.code is code
    assert (raised.reason, raised.metadata, raised.domain) == (
        error.reason,
        error.metadata,
        "loom.v1",
    )
    assert raised.message == error.message


def test_retry_info_is_read_and_unreadable_details_are_ignored() -> None:
    info, retry = any_pb2.Any(), any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="loom.v1"))
    retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=250_000_000)))
    status = status_pb2.Status(code=8, message="slow down", details=[info, retry])
    details = parse_status_details(status.SerializeToString())
    raised = errors.error_from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", details)
    assert isinstance(raised, errors.RateLimited)
    assert raised.retry_delay == 0.25

    empty = parse_status_details(b"\xff\xff not a status")
    assert empty == parse_status_details(None)
    unknown = errors.error_from_status(grpc.StatusCode.UNAVAILABLE, "", empty)
    assert type(unknown) is errors.Unavailable
    assert str(unknown) == "UNAVAILABLE (UNAVAILABLE)"
