"""cffi binding to Xen's libxenstore, and asyncio helpers for its watches.

On a Xen host this is Xen's own library; on xensim, xensim's xenstored (``XENSTORED_PATH``)
answers. Grant tables and event channels the product uses from C (cext/vchan); the tests
have Python bindings for them in ``tests/xenbind``.
"""

from __future__ import annotations

from .errors import TransactionConflict, XenError
from .xenstore import Perm, Transaction, WatchEvent, XenStore

__all__ = [
    "Perm",
    "Transaction",
    "TransactionConflict",
    "WatchEvent",
    "XenError",
    "XenStore",
]
