"""Loom: state for stateless LLMs, served over gRPC.

Rooms, with imports pointing one way only (docs/architecture.md has what
each may import; tests/test_architecture.py checks it):

- ``service.api``: gRPC servicers and the interceptor (protobuf in and out,
  API keys to tenants, domain errors to status codes);
- ``service.http``: the OpenAI-shaped HTTP door (Conversations and
  Responses endpoints over the same use cases, errors in OpenAI's shape);
- ``service.core``: the conversation domain (models, errors, the ports
  adapters implement, assistants, threads, leases, jobs, summaries, prompt
  fitting, and the reply loop: ``conversation.py`` over ``core/reply/``);
  it never imports protobuf, grpc, pymongo, chromadb or openai;
- ``service.store``: MongoDB repositories implementing ``service.core.ports``;
- ``service.llm``: the OpenAI-compatible model client and token counting
  (``ChatModel``, ``TokenCounter``);
- ``service.memory``: assistants' long-term memory (recall, extraction, the
  MemoryService use cases) over Chroma and the embedders;
- ``service.telemetry``: OpenTelemetry set-up, spans and tracing wrappers;
- ``service.server`` and ``service.config``: wiring and settings.
"""
