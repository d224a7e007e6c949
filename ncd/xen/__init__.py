"""cffi bindings to Xen's libxenstore, libxengnttab/libxengntshr and libxenevtchn.

On a Xen host these are Xen's own libraries; on xensim the shims (picked through
``LD_LIBRARY_PATH``) and xensim's xenstored (``XENSTORED_PATH``) stand in for them.
"""

from __future__ import annotations

from .errors import MappingReleasedError, TransactionConflict, XenError
from .evtchn import Evtchn
from .gntshr import Gntshr, SharedPages
from .gnttab import CopySegment, Gnttab, GrantRef, GrantStatus
from .mapping import PAGE_SIZE, Mapping
from .xenstore import Perm, Transaction, WatchEvent, XenStore

__all__ = [
    "PAGE_SIZE",
    "CopySegment",
    "Evtchn",
    "Gnttab",
    "Gntshr",
    "GrantRef",
    "GrantStatus",
    "Mapping",
    "MappingReleasedError",
    "Perm",
    "SharedPages",
    "Transaction",
    "TransactionConflict",
    "WatchEvent",
    "XenError",
    "XenStore",
]
