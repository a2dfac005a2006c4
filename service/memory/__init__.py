"""Long-term memory of assistants.

- ``domain.py``: recall before a reply, episodic writes, fact extraction
  jobs and the MemoryService use cases, built on the port in ``ports.py``;
- ``extraction.py``: how the model's proposed facts are extracted and
  settled against the memories already stored;
- ``index.py``: the port over Chroma (hybrid dense + BM25 search);
- ``embeddings.py``, ``dense.py``, ``lexical.py``: the embedders, and the
  vectors and BM25 index the index's search caches hold.

The package re-exports nothing: import from the module that defines a name.
"""
