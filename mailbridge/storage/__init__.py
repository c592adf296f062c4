"""Storage: the only package that imports SQLAlchemy. It owns the schema, queries and transactions."""

from mailbridge.storage.engine import Store, open_store

__all__ = ["Store", "open_store"]
