"""xenstored's watch index finds exactly the watches the rule matches (Watch.matches),
per connection in registration order, through adds, removes and clears."""

from __future__ import annotations

import random

from xensim.xenstored.watches import Event, Watch, WatchIndex, WatchList

NAMES = ("local", "domain", "1", "2", "device", "vif", "0", "state")


def random_path(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return rng.choice(("@introduceDomain", "@releaseDomain", "/"))
    return "/" + "/".join(rng.choice(NAMES) for _ in range(rng.randint(1, 5)))


def test_the_index_agrees_with_testing_every_watch() -> None:
    rng = random.Random(11)
    index = WatchIndex()
    owners = [object() for _ in range(6)]
    lists = {o: WatchList(index, o) for o in owners}
    for step in range(3000):
        o = rng.choice(owners)
        wl = lists[o]
        r = rng.random()
        if r < 0.5:
            wl.add(Watch(random_path(rng), rng.choice("ab"), None))
        elif r < 0.65 and wl.watches:
            w = rng.choice(wl.watches)
            assert wl.remove(w.path, w.token)
        elif r < 0.67:
            wl.clear()
        event = Event(random_path(rng), exact=rng.random() < 0.2)
        want = {o: m for o, wl in lists.items() if (m := wl.matching(event))}
        got = index.matching(event)
        assert got == want, (step, event)  # each owner's list in its registration order
    for wl in lists.values():
        wl.clear()
    assert index.matching(Event("/local/domain/1", exact=False)) == {}
