"""Long-term memory of assistants.

- ``domain.py``: what a reply uses (recall, episodic writes, forgetting),
  built on the port in ``ports.py``; ``learning.py``: the fact-extraction
  job over ``extraction.py`` (how the model's proposed facts are extracted
  and settled against the memories already stored); ``history.py``: the
  versions a change keeps; ``memories.py``: the MemoryService use cases,
  with the filter of ``filters.py``;
- ``index.py``: the port over Chroma, searched by hybrid dense + BM25
  ranking (``ranking.py``, pure) over this process's caches
  (``_cache.py``); ``collection.py`` (an assistant's collection, its model
  and version), ``_codec.py`` (a record as Chroma metadata) and
  ``chroma.py`` (the client's calls, typed) serve it; ``reindex.py``
  re-embeds after a change of embedding model;
- ``embeddings.py``, ``dense.py``, ``lexical.py``: the embedders, and the
  vectors and BM25 index the search caches hold.

The package re-exports nothing: import from the module that defines a name.
"""
