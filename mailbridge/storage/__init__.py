"""Storage: the only package that imports SQLAlchemy. It owns the schema, queries and transactions.

`Session` and `Batch` are re-exported for the type hints of the code that receives them.
"""

from mailbridge.storage.batch import Batch
from mailbridge.storage.engine import Store, open_store
from mailbridge.storage.uow import Session

__all__ = ["Batch", "Session", "Store", "open_store"]
