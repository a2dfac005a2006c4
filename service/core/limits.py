"""The bounds of Loom's contract: longest fields, page sizes, metadata, ids
and tools, in one place so that a check and its error message agree."""

from __future__ import annotations

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_SEARCH_LIMIT",
    "ID_HEX_DIGITS",
    "LEGACY_ID_HEX_DIGITS",
    "MAX_ADDED_MESSAGES",
    "MAX_ASSISTANT_NAME",
    "MAX_CONTEXT_WINDOW",
    "MAX_FILTER_CHARS",
    "MAX_FILTER_CLAUSES",
    "MAX_INSTRUCTIONS",
    "MAX_MEMORY_BATCH",
    "MAX_MEMORY_CHARS",
    "MAX_METADATA_KEY",
    "MAX_METADATA_PAIRS",
    "MAX_METADATA_VALUE",
    "MAX_MODEL",
    "MAX_PAGE_SIZE",
    "MAX_QUERY_CHARS",
    "MAX_REQUEST_ID",
    "MAX_SEARCH_LIMIT",
    "MAX_TENANT",
    "MAX_THREAD_TTL_DAYS",
    "MAX_TOOLS",
    "MAX_TOOL_ARGUMENTS_CHARS",
    "MAX_TOOL_CALL_ID",
    "MAX_TOOL_DESCRIPTION",
    "MAX_TOOL_NAME",
    "MAX_TOOL_OUTPUT_CHARS",
    "MAX_TOOL_SCHEMA_CHARS",
    "MAX_USER_ID",
    "MIN_CONTEXT_WINDOW",
]

# Lists (AIP-158): page_size 0 means the default, larger sizes are clamped.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

# Ids: a type prefix, '_' and this many hex digits (service.core.ids).
ID_HEX_DIGITS = 32  # 128 random bits (core/ids.py)
LEGACY_ID_HEX_DIGITS = 24  # ids stored before ids were random
# Caller-chosen strings that name things.
MAX_USER_ID = 256
MAX_REQUEST_ID = 128
MAX_MODEL = 256
# API keys' tenant names (the api-keys CLI).
MAX_TENANT = 64

# Metadata maps on assistants, threads and memories.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512

# Assistants.
MAX_ASSISTANT_NAME = 256
MAX_INSTRUCTIONS = 256_000
MIN_CONTEXT_WINDOW = 512  # smaller cannot hold a prompt and a reply
MAX_CONTEXT_WINDOW = 100_000_000

# Function tools and their outputs.
MAX_TOOLS = 128
MAX_TOOL_NAME = 64
MAX_TOOL_DESCRIPTION = 4096
MAX_TOOL_SCHEMA_CHARS = 64_000
MAX_TOOL_OUTPUT_CHARS = 100_000
# Tool calls given with AddMessages (the model writes them in replies).
MAX_TOOL_CALL_ID = 256
MAX_TOOL_ARGUMENTS_CHARS = 64_000

# Threads: messages per AddMessages call, how far ahead they may expire.
MAX_ADDED_MESSAGES = 1000
MAX_THREAD_TTL_DAYS = 3650

# The filter of every list and search (service.core.filtering).
MAX_FILTER_CHARS = 2000
MAX_FILTER_CLAUSES = 16

# Memories and their search.
MAX_MEMORY_CHARS = 4000
MAX_MEMORY_BATCH = 1000  # memories a BatchCreateMemories call takes
MAX_QUERY_CHARS = 4000
DEFAULT_SEARCH_LIMIT = 10
MAX_SEARCH_LIMIT = 100
