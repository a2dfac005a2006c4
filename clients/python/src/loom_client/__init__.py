"""Python client for Loom, state for stateless LLMs over gRPC.

    from loom_client import Loom

    loom = Loom("127.0.0.1:50051", api_key="dev-key")
    reply = loom.send_message("My favorite color is blue.")
    again = loom.send_message("What did I just tell you?", thread_id=reply.thread_id)

``Loom`` blocks; ``AsyncLoom`` has the same surface for asyncio. Errors are
``loom_client.errors`` exceptions named after the server's reasons
(``ThreadBusy``, ``NotFound``, ...); the objects returned are the dataclasses
of ``loom_client.types``.
"""

from loom_client._client import AsyncLoom, Loom
from loom_client.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    LoomError,
    NotFound,
    RateLimited,
    ResourceExhausted,
    ThreadBusy,
    Unauthenticated,
    Unavailable,
)
from loom_client.tools import function_tool
from loom_client.types import (
    Assistant,
    ContextStrategy,
    Event,
    MemoriesRecalled,
    Memory,
    MemoryKind,
    MemoryMode,
    MemoryOperation,
    Message,
    MessageStatus,
    OnBusy,
    OperationState,
    RecalledMemory,
    Reply,
    Role,
    ScoredMemory,
    Started,
    TextDelta,
    Thread,
    ToolCall,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "Assistant",
    "AsyncLoom",
    "ContextStrategy",
    "Event",
    "FailedPrecondition",
    "InvalidArgument",
    "Loom",
    "LoomError",
    "MemoriesRecalled",
    "Memory",
    "MemoryKind",
    "MemoryMode",
    "MemoryOperation",
    "Message",
    "MessageStatus",
    "NotFound",
    "OnBusy",
    "OperationState",
    "RateLimited",
    "RecalledMemory",
    "Reply",
    "ResourceExhausted",
    "Role",
    "ScoredMemory",
    "Started",
    "TextDelta",
    "Thread",
    "ThreadBusy",
    "ToolCall",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "function_tool",
]
