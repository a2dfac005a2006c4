"""Loom: state for stateless LLMs, served over gRPC.

Layers, with imports pointing one way only:

- ``service.api``: gRPC servicers and interceptors (protobuf in and out, domain
  errors to status codes);
- ``service.core``: the conversation domain (validation, prompt building, the
  reply loop, thread leases); it never imports protobuf, pymongo or openai;
- ``service.store``: MongoDB repositories implementing ``service.core.ports``;
- ``service.llm``: the OpenAI-compatible model client implementing
  ``service.core.ports.ChatModel``;
- ``service.server`` and ``service.config``: wiring and settings.
"""
