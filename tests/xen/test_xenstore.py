"""libxenstore bindings against xensim's xenstored, as dom0 and as a domU."""

from __future__ import annotations

import errno
import time

import pytest


def test_crud_directory_and_domain_path(peer):
    d0 = peer(0)
    assert d0.run("""
        xs = XenStore()
        base = '/local/domain/0/xentest/crud'
        xs.rm(base, missing_ok=True)
        xs.write(base + '/a', 'alpha')
        xs.write(base + '/b', b'\\x00\\xffbin')
        xs.mkdir(base + '/dir')
        result = [xs.read(base + '/a'), xs.read_bytes(base + '/b').hex(),
                  sorted(xs.directory(base)), xs.read(base + '/dir'),
                  xs.exists(base + '/nope'), xs.read_or_none(base + '/nope'),
                  xs.get_domain_path(0), xs.get_domain_path(2)]
    """) == [
        "alpha",
        "00ff62696e",
        ["a", "b", "dir"],
        "",
        False,
        None,
        "/local/domain/0",
        "/local/domain/2",
    ]
    assert d0.run("xs.rm(base + '/a'); result = sorted(xs.directory(base))") == ["b", "dir"]
    err = d0.error("xs.read(base + '/a')")
    assert err.type == "XenError" and err.errno == errno.ENOENT
    assert err.call == "xs_read('/local/domain/0/xentest/crud/a')"
    assert "xs_read('/local/domain/0/xentest/crud/a')" in err.message
    assert "No such file" in err.message
    # as in Xen's xenstored, removing a missing node is fine if its parent exists
    d0.run("xs.rm(base + '/a')")
    err = d0.error("xs.rm(base + '/no/such')")
    assert (
        err.errno == errno.ENOENT
        and err.call == f"xs_rm('{'/local/domain/0/xentest/crud'}/no/such')"
    )
    d0.run("xs.rm(base)")
    err = d0.error("xs.directory(base)")
    assert err.errno == errno.ENOENT and err.call.startswith("xs_directory(")


def test_permissions_between_domains(peer):
    d0, d1, d2 = peer(0), peer(1), peer(2)
    path = "/local/domain/0/xentest/perms"
    d0.run(f"""
        xs = XenStore()
        xs.rm({path!r}, missing_ok=True)
        xs.write({path!r}, 'secret')
        xs.set_perms({path!r}, [Perm(0, 'n'), Perm(1, 'r')])
        result = xs.get_perms({path!r})
    """)
    assert d0.run(f"result = xs.get_perms({path!r})") == [[0, "n"], [1, "r"]]
    for p in (d1, d2):
        p.run("xs = XenStore()")
    assert d1.run(f"result = xs.read({path!r})") == "secret"
    err = d1.error(f"xs.write({path!r}, 'mine')")
    assert err.errno == errno.EACCES and err.call.startswith(f"xs_write({path!r}")
    err = d2.error(f"xs.read({path!r})")
    assert err.errno == errno.EACCES and err.call == f"xs_read({path!r})"
    # owner transfer: dom1 owns it now, everyone else may read
    d0.run(f"xs.set_perms({path!r}, [Perm(1, 'r')])")
    d1.run(f"xs.write({path!r}, 'mine')")
    assert d2.run(f"result = xs.read({path!r})") == "mine"
    err = d2.error(f"xs.set_perms({path!r}, [Perm(2, 'b')])")
    assert err.errno == errno.EACCES and err.call.startswith("xs_set_permissions(")
    err = d1.error(f"xs.set_perms({path!r}, [Perm(1, 'x')])")
    assert err.type == "ValueError"
    d0.run(f"xs.rm({path!r})")


def test_transaction_commit_abort_and_conflict(peer):
    a, b = peer(0), peer(0)
    base = "/local/domain/0/xentest/tx"
    assert a.run(f"""
        xs = XenStore()
        xs.rm({base!r}, missing_ok=True)
        xs.write({base!r} + '/n', '0')
        with xs.transaction() as t:
            t.write({base!r} + '/n', '1')
            t.write({base!r} + '/m', 'x')
        try:
            with xs.transaction() as t:
                t.write({base!r} + '/n', 'aborted')
                raise KeyError('boom')
        except KeyError:
            pass
        result = [xs.read({base!r} + '/n'), xs.read({base!r} + '/m')]
    """) == ["1", "x"]
    assert a.run(f"result = xs.read({base!r} + '/n')") == "1"
    # conflict: b writes between a's read and a's commit
    b.run("xs = XenStore()")
    a.run(
        f"t = xs.transaction_start(); v = t.read({base!r} + '/n'); "
        f"t.write({base!r} + '/n', str(int(v) + 1))"
    )
    b.run(f"xs.write({base!r} + '/n', '10')")
    err = a.error("t.commit()")
    assert err.type == "TransactionConflict" and err.errno == errno.EAGAIN
    assert err.call.startswith("xs_transaction_end(")
    assert a.run(f"result = xs.read({base!r} + '/n')") == "10"
    # run_in_transaction retries: the first attempt is spoiled by b, the second commits
    result = a.run(f"""
        attempts = []
        def bump(t):
            v = int(t.read({base!r} + '/n'))
            attempts.append(v)
            if len(attempts) == 1:
                other = XenStore()
                other.write({base!r} + '/n', '100')   # a concurrent writer
                other.close()
            t.write({base!r} + '/n', str(v + 1))
            return v + 1
        result = [xs.run_in_transaction(bump), attempts, xs.read({base!r} + '/n')]
    """)
    assert result == [101, [10, 100], "101"]
    # bounded: a transaction that always conflicts gives up with a clear error
    err = a.error(f"""
        def always(t):
            t.write({base!r} + '/n', 'x')
            other = XenStore(); other.write({base!r} + '/n', 'y'); other.close()
        xs.run_in_transaction(always, attempts=3)
    """)
    assert err.type == "TransactionConflict" and "gave up after 3 attempts" in err.message
    a.run(f"xs.rm({base!r})")


def test_async_transaction_retries_without_blocking_the_loop(peer):
    """aio.run_in_transaction awaits its backoff: another coroutine keeps ticking while
    a transaction is spoiled by a concurrent writer, retried, and finally commits."""
    a = peer(0)
    base = "/local/domain/0/xentest/aiotx"
    result = a.run(f"""
        xs = XenStore()
        xs.write({base!r} + '/n', '0')
        ticks, seen = [0], []

        async def ticker():
            while True:
                ticks[0] += 1
                await asyncio.sleep(0)

        def bump(t):
            v = int(t.read({base!r} + '/n'))
            seen.append(ticks[0])
            if len(seen) <= 5:  # a concurrent writer spoils the first five attempts
                other = XenStore(); other.write({base!r} + '/n', str(v + 10)); other.close()
            t.write({base!r} + '/n', str(v + 1))
            return v + 1

        async def main():
            tick = asyncio.ensure_future(ticker())
            await asyncio.sleep(0)
            try:
                return await aio.run_in_transaction(xs, bump, backoff=0.01)
            finally:
                tick.cancel()

        value = asyncio.run(main())
        result = [value, xs.read({base!r} + '/n'), seen]
        xs.rm({base!r})
    """)
    value, stored, seen = result
    assert value == 51 and stored == "51"  # five spoiled attempts (+10 each), then +1
    assert len(seen) == 6
    # between every two attempts the ticker ran: the backoff awaited, it did not sleep
    assert all(later > earlier for earlier, later in zip(seen, seen[1:], strict=False)), seen


def test_blocking_transaction_does_not_sleep_on_an_event_loop(peer):
    """Code on the loop that still calls the blocking runner (a vchan server publishing
    its entry) retries at once: no time.sleep stalls the loop's other tasks."""
    a = peer(0)
    base = "/local/domain/0/xentest/looptx"
    elapsed, value = a.run(f"""
        import time
        xs = XenStore()
        xs.write({base!r} + '/n', '0')
        tries = []

        def bump(t):
            v = int(t.read({base!r} + '/n'))
            tries.append(v)
            if len(tries) <= 5:
                other = XenStore(); other.write({base!r} + '/n', str(v + 10)); other.close()
            t.write({base!r} + '/n', str(v + 1))
            return v + 1

        async def main():
            t0 = time.monotonic()
            value = xs.run_in_transaction(bump, backoff=0.1)  # off the loop: 1.5 s of sleeps
            return time.monotonic() - t0, value

        result = asyncio.run(main())
        xs.rm({base!r})
    """)
    assert value == 51
    assert elapsed < 0.5, elapsed


def test_blocking_watch_api(peer):
    d0 = peer(0)
    base = "/local/domain/0/xentest/watch"
    result = d0.run(f"""
        xs = XenStore()
        xs.rm({base!r}, missing_ok=True)
        xs.mkdir({base!r})
        xs.watch({base!r}, 'tok')
        first = xs.read_watch()          # xenstored fires every new watch once
        xs.write({base!r} + '/k', 'v')
        second = xs.read_watch()
        import select
        fd = xs.fileno()
        xs.write({base!r} + '/k2', 'v')
        r, _, _ = select.select([fd], [], [], 5)
        third = xs.check_watch()
        xs.unwatch({base!r}, 'tok')
        none = xs.check_watch()
        result = [list(first), list(second), bool(r), list(third), none]
    """)
    assert result == [[base, "tok"], [base + "/k", "tok"], True, [base + "/k2", "tok"], None]
    err = d0.error(f"xs.unwatch({base!r}, 'tok')")
    assert err.type == "XenError" and err.call == f"xs_unwatch({base!r}, 'tok')"
    d0.run(f"xs.rm({base!r})")


def test_closed_store_raises(peer):
    d1 = peer(1)
    err = d1.error("xs = XenStore(); xs.close(); xs.read('/local/domain/1/name')")
    assert err.type == "XenError" and err.errno == errno.EBADF
    assert err.call == "xs_read('/local/domain/1/name')"


def test_wait_until_resolves_on_other_domains_write(peer):
    d0, d1 = peer(0), peer(1)
    key = "/local/domain/1/data/xentest-ready"
    d1.run(f"xs = XenStore(); xs.rm({key!r}, missing_ok=True)")
    d0.submit(f"""
        xs = XenStore()
        async def main():
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            v = await aio.wait_until(xs, {key!r},
                                     lambda: (xs.read_or_none({key!r}) or '').startswith('go') and
                                             xs.read({key!r}),
                                     timeout=20)
            return [v, loop.time() - t0]
        result = asyncio.run(main())
    """)
    time.sleep(0.5)
    d1.run(f"xs.write({key!r}, 'not yet')")
    time.sleep(0.3)
    d1.run(f"xs.write({key!r}, 'go!')")
    value, waited = d0.result()
    assert value == "go!"
    assert 0.5 < waited < 10
    d1.run(f"xs.rm({key!r})")


def test_wait_until_times_out_cleanly(peer):
    d0 = peer(0)
    key = "/local/domain/0/xentest/never"
    err = d0.error(f"""
        xs = XenStore()
        async def main():
            await aio.wait_until(xs, [{key!r}, '/local/domain/0/xentest/never2'],
                                 lambda: xs.read_or_none({key!r}) == 'yes',
                                 timeout=0.5, what='never-is-yes')
        asyncio.run(main())
    """)
    assert err.type == "TimeoutError"
    assert "never-is-yes did not hold within 0.5s" in err.message and key in err.message
    # the watches were removed and the loop's reader too: the store keeps working
    assert d0.run(f"""
        from ncd.xen.aio import _hubs
        xs.write({key!r}, 'x')
        result = [len(_hubs), xs.check_watch(), xs.read({key!r})]
    """) == [0, None, "x"]
    d0.run(f"xs.rm({key!r})")


def test_async_watcher_iterates_events(peer):
    d0, d2 = peer(0), peer(2)
    base = "/local/domain/2/data/xentest-watch"
    d2.run(f"xs = XenStore(); xs.rm({base!r}, missing_ok=True); xs.mkdir({base!r})")
    d0.submit(f"""
        xs = XenStore()
        async def main():
            seen = []
            async with aio.Watch(xs, {base!r}) as w:
                async for ev in w:
                    seen.append(ev.path)
                    if ev.path.endswith('/3'):
                        break
            return seen
        result = asyncio.run(asyncio.wait_for(main(), 20))
    """)
    time.sleep(0.5)
    for i in (1, 2, 3):
        d2.run(f"xs.write({base!r} + '/{i}', 'v')")
    seen = d0.result()
    assert seen[0] == base  # the initial firing
    assert [p for p in seen if p != base] == [f"{base}/1", f"{base}/2", f"{base}/3"]
    d2.run(f"xs.rm({base!r})")


@pytest.mark.parametrize("bad", ["", "/with\x00nul"])
def test_bad_paths_rejected_before_the_call(peer, bad):
    d0 = peer(0)
    err = d0.error(f"XenStore().read({bad!r})")
    assert err.type == "ValueError"
