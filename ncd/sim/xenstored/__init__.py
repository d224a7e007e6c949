"""xensim's xenstored: Xen's xenstore wire protocol on one Unix socket per domain.

Run as ``python -m ncd.sim.xenstored --dir WORLD``. Modules:

* :mod:`.wire` -- packet header codec, message types, error names (``xen/io/xs_wire.h``)
* :mod:`.perms` -- permission entries and the access rule
* :mod:`.paths` -- path validation and canonicalisation
* :mod:`.tree` -- the node database and the operations on it
* :mod:`.transactions` -- optimistic transactions (generation checks, EAGAIN)
* :mod:`.watches` -- watch registration and event matching
* :mod:`.server` -- asyncio server: connections, dispatch, domains
* :mod:`.client` -- a small synchronous wire client (tests, ``ncd-sim up``)
"""
