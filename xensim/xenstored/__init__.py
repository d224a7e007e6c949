"""xensim's xenstored: Xen's xenstore wire protocol on one Unix socket per domain.

Run as ``python -m xensim.xenstored --dir WORLD``. Modules:

* :mod:`.wire` -- packet header codec, message types, error names (``xen/io/xs_wire.h``)
* :mod:`.perms` -- permission entries and the access rule
* :mod:`.paths` -- path validation and canonicalisation
* :mod:`.tree` -- the node database and the operations on it
* :mod:`.transactions` -- optimistic transactions (generation checks, EAGAIN)
* :mod:`.watches` -- watch registration and event matching
* :mod:`.server` -- asyncio server: connections, dispatch, domains
* :mod:`.client` -- a small synchronous wire client (tests, ``ncd-sim up``)

Behaviour follows docs/misc/xenstore.txt and Xen 4.17's C xenstored (the version
whose libxenstore Debian ships). Where this implementation knowingly differs:

* every connection is a domain's (there is no privileged "socket" class besides
  dom0's socket); a dom0 client's relative paths resolve to /local/domain/0;
* quota errors are ENOSPC (nodes per domain, node size, permissions per node,
  transactions) and E2BIG (watches), as in 4.17: its xs_wire.h has no EQUOTA;
* a client with more than 4 MiB of unread output is disconnected (instead of
  xenstored's watch-event timeout); identical pending events are not merged;
* RESUME only validates its argument (there are no shutdown states to reset);
  GET/SET_FEATURE and GET/SET_QUOTA are ENOSYS, as in 4.17 (XS_TYPE_COUNT 23).
"""
