"""A hostile peer scribbles on the shared control page over xensim: the other side never
crashes, hangs or touches memory outside the ring; bad values close it with a reason.

Also run against the -fsanitize=address,undefined build (built on demand into
build/sanitize/, loaded with NCD_HOTPATH_SO and LD_PRELOAD=libasan).
"""

import errno
import struct

import pytest

from tests.needs import require_root

from .sanitize import sanitized_env
from .simhelp import peers, vchan_path

LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD = 0, 4, 8, 12
LEFT_ORDER, RIGHT_ORDER, CLI_LIVE, SRV_LIVE = 16, 18, 20, 21


def hx32(v):
    return struct.pack("<I", v & 0xFFFFFFFF).hex()


def hx16(v):
    return struct.pack("<H", v).hex()


@pytest.fixture(scope="module", params=["plain", "asan"])
def build_env(request):
    require_root("a xensim world: network namespaces")  # before building for nothing
    return {} if request.param == "plain" else sanitized_env()


# (who scribbles, offset, bytes, reason the victim must report or None = keeps working)
CASES = [
    ("client", LEFT_PROD, hx32(0x7FFFFFFF), "producer index"),
    ("client", LEFT_PROD, hx32(0xFFFFFFFF), "producer index"),
    ("client", RIGHT_CONS, hx32(0x12345678), "consumer index"),
    ("client", CLI_LIVE, "09", "live flag"),
    ("client", LEFT_ORDER, hx16(30) + hx16(0xFFFF), None),  # orders are read once
    ("client", 24, "ff" * 64, None),  # grant list after connect: never re-read
    ("server", RIGHT_PROD, hx32(0x80000000), "producer index"),
    ("server", LEFT_CONS, hx32(0x12345678), "consumer index"),
    ("server", LEFT_CONS, hx32(0xFFFFF000), None),  # 4096 "in flight": plausible, harmless
    ("server", SRV_LIVE, "02", "srv_live"),
    ("server", SRV_LIVE, "fe", "live flag"),
]


@pytest.mark.parametrize("scribbler,off,data,reason", CASES)
def test_hostile_scribble_after_connect(sim, build_env, scribbler, off, data, reason):
    path = vchan_path(1, "hostile")
    with peers(sim, 1, 2, env_extra=build_env) as (srv, cli):
        srv.call(f"server 2 {path} 65536 65536")
        cli.call(f"connect 1 {path}")
        assert srv.call("wait_open 5")["open"] == 1
        bad, victim = (cli, srv) if scribbler == "client" else (srv, cli)
        assert bad.call("write 1000")["left"] == 0
        bad.call(f"poke {off} {data}")
        res = victim.call("exercise 0.5")
        assert res["calls"] > 10  # it kept answering: no hang
        if reason is None:
            assert res["reason"] is None and res["open"] == 1
            assert victim.call("status")["stats"]["bad_peer"] == 0
        else:
            assert reason in res["reason"]
            assert res["open"] == 0 and errno.EPROTO in res["errnos"]
            assert res["stats"]["bad_peer"] == 1
            # the victim marked its side closed: the scribbler sees that
            assert bad.call("wait_closed 5")["open"] == 0
        # both processes are still alive and answering
        assert srv.call("pid")["ok"] and cli.call("pid")["ok"]


def test_live_flag_flipping(sim, build_env):
    path = vchan_path(1, "hostile")
    with peers(sim, 1, 2, env_extra=build_env) as (srv, cli):
        srv.call(f"server 2 {path} 4096 4096")
        cli.call(f"connect 1 {path}")
        assert srv.call("wait_open 5")["open"] == 1
        for value in ("00", "01", "00", "01", "02", "01"):
            cli.call(f"poke {CLI_LIVE} {value}")
            srv.call("exercise 0.05")
        st = srv.call("status")
        assert st["open"] == 0  # once seen closed, it stays closed
        assert srv.call("pid")["ok"]


@pytest.mark.parametrize(
    "orders,grants,msg",
    [
        ((9, 11), None, "outside"),
        ((21, 12), None, "outside"),
        ((0xFFFF, 0xFFFF), None, "outside"),
        ((10, 10), None, "both rings"),
        ((20, 10), None, "do not fit"),
        ((20, 20), "ff" * 2048, None),  # 512 bogus grant refs: the map fails cleanly
    ],
)
def test_hostile_server_page_at_connect(sim, build_env, orders, grants, msg):
    path = vchan_path(1, "hostile")
    with peers(sim, 1, 2, env_extra=build_env) as (srv, cli):
        srv.call(f"server 2 {path} 65536 65536")
        srv.call(f"poke {LEFT_ORDER} {hx16(orders[0])}{hx16(orders[1])}")
        if grants:
            srv.call(f"poke 24 {grants}")
        res = cli.call(f"connect 1 {path}", check=False)
        assert not res["ok"]
        if msg:
            assert msg in res["error"] and res["errno"] == errno.EPROTO
        assert cli.call("pid")["ok"]
