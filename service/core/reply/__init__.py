"""The reply loop behind SendMessage, SubmitToolOutputs and CancelRun, one
module per job (``service.core.conversation`` puts them in order):

- ``collaborators``: the stores, services and policies a reply is built with;
- ``request``: the SendMessage request, what it names, and its idempotency
  record (claim, replay of a repeat, release on early failure);
- ``build``: the messages a run appends and the ``Started`` event;
- ``writes``: every write made under a thread's lease, and one reply's writes;
- ``generate``: one round of a reply (stream from the model, save progress,
  settle);
- ``hooks``: memory and summaries around the model call;
- ``fitting``: the reply's prompt, fitted to the model's window;
- ``runs``: tool runs (submit outputs, cancel, expiry);
- ``recovery``: taking a thread's lease, and settling a reply cut off by a
  crash when that lease is taken over.
"""
