"""The HTTP door: OpenAI's Conversations and Responses APIs over Loom's core.

A translator like ``service.api``: requests in OpenAI's shapes become the
same use cases the gRPC servicers call (``Threads``, ``Conversation``,
``Forks``), and domain errors become OpenAI's error shape through one table
(``errors.py``); it adds no policy of its own. Modules: ``app`` (routes,
authentication and call limits), ``conversations`` and ``responses`` (the
endpoints), ``bodies`` (request bodies), ``inputs`` (input items, tools),
``generation`` (sampling settings and ``text.format``),
``objects`` (the objects returned), ``listing`` (item lists and their
cursors), ``stream`` (server-sent events), ``errors`` and ``server``
(uvicorn on the gRPC server's event loop).

Ids: a conversation's id is its thread's id (``thread_...``), a message
item's id is its message's (``msg_...``), a response's id is ``resp_``
with the hex digits of the assistant message that holds it, and a function
call item's id is ``fc_`` with that message's digits and the call's index.
"""
