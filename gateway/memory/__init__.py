"""The organisation's AI memory: records in a SQL store, found by meaning through an HNSW index."""
