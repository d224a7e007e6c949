"""Event channels across simulated domains, observed through asyncio."""

from __future__ import annotations

import errno


def _connect(d0, d1):
    p1 = d1.run("ev = Evtchn(); port = ev.bind_unbound_port(0); result = port")
    p0 = d0.run(f"ev = Evtchn(); port = ev.bind_interdomain(1, {p1}); result = port")
    return p0, p1


WAIT = """
async def main():
    aev = AsyncEvtchn(ev)
    try:
        return await aev.wait(port, timeout={timeout})
    finally:
        aev.close()
result = asyncio.run(main())
"""


def test_notify_both_ways_via_asyncio(peer):
    d0, d1 = peer(0), peer(1)
    p0, p1 = _connect(d0, d1)
    assert p0 > 0 and p1 > 0
    d1.submit(WAIT.format(timeout=20))
    d0.run("ev.notify(port)")
    assert d1.result() >= 1
    d0.submit(WAIT.format(timeout=20))
    d1.run("ev.notify(port)")
    assert d0.result() >= 1
    # after unmask, the next notification is delivered again
    d1.submit(WAIT.format(timeout=20))
    d0.run("ev.notify(port)")
    assert d1.result() >= 1


def test_wait_times_out_without_notify(peer):
    d0, d1 = peer(0), peer(1)
    _connect(d0, d1)
    err = d1.error(WAIT.format(timeout=0.3))
    assert err.type == "TimeoutError" and "port" in err.message


def test_blocking_pending_and_unmask(peer):
    d0, d1 = peer(0), peer(1)
    _connect(d0, d1)
    d0.run("ev.notify(port)")
    assert d1.run("""
        import select
        r, _, _ = select.select([ev.fileno()], [], [], 10)
        got = ev.pending()
        ev.unmask(got)
        result = [bool(r), got == port]
    """) == [True, True]


def test_unbind_and_errors_name_the_call(peer):
    d0, d1 = peer(0), peer(1)
    p0, p1 = _connect(d0, d1)
    err = d0.error("ev.bind_interdomain(1, 4000)")  # no such unbound port
    assert err.type == "XenError" and err.errno
    assert err.call == "xenevtchn_bind_interdomain(domid=1, remote_port=4000)"
    err = d0.error("ev.notify(4001)")  # not ours
    assert err.type == "XenError" and err.errno and err.call == "xenevtchn_notify(port=4001)"
    d0.run("ev.unbind(port)")
    err = d0.error("ev.notify(port)")
    assert err.type == "XenError" and err.call == f"xenevtchn_notify(port={p0})"
    err = d0.error("ev.unbind(port)")
    assert err.type == "XenError" and err.call == f"xenevtchn_unbind(port={p0})"
    err = d0.error("ev.close(); ev.notify(port)")
    assert err.errno == errno.EBADF
    err = d0.error("Evtchn().notify(0)")
    assert err.type == "ValueError"
