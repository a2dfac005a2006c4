"""Long-term memory of assistants.

- ``domain.py``: recall before a reply, episodic writes, fact extraction
  jobs and the MemoryService use cases, built on the port in ``ports.py``;
- ``extraction.py``: how the model's proposed facts are extracted and
  settled against the memories already stored;
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
