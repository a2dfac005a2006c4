"""The start-up check that replicas on one database share one memory store
(service/deployment.py), against the real FerretDB."""

from __future__ import annotations

import logging
import uuid

import pytest

from service.deployment import check_memory_store, memory_store_of
from service.store import connect
from tests.conftest import make_settings
from tests.support.ferretdb import FerretDB


async def test_a_replica_with_another_memory_store_on_the_same_database_is_told(
    ferretdb: FerretDB, caplog: pytest.LogCaptureFixture
) -> None:
    db = f"loom_deploy_{uuid.uuid4().hex[:8]}"
    first = make_settings(ferretdb, None, mongodb_db=db)
    same = make_settings(ferretdb, None, mongodb_db=db, data_dir=str(first.data_dir))
    other = make_settings(ferretdb, None, mongodb_db=db)  # its own data_dir: its own Chroma
    server = make_settings(ferretdb, None, mongodb_db=db, chroma_url="http://chroma.internal:8000")
    store = connect(ferretdb.uri, db)
    try:
        with caplog.at_level(logging.WARNING, logger="service.deployment"):
            assert await check_memory_store(store, first) is None  # the first start
            assert await check_memory_store(store, same) is None  # a restart, or a twin
            assert caplog.records == []
            assert await check_memory_store(store, other) == memory_store_of(first)
            assert await check_memory_store(store, server) == memory_store_of(other)
        told = [r.getMessage() for r in caplog.records]
        assert len(told) == 2
        assert memory_store_of(first) in told[0]
        assert memory_store_of(other) in told[0]
        assert "LOOM_CHROMA_URL" in told[0]
        assert "the Chroma server at http://chroma.internal:8000" in told[1]
    finally:
        await store.close()
