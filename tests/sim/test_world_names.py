"""`ncd-sim create --name`: the name in /local/domain/<id>/name (as libxl writes it, before
the domain is introduced), a name in use or all digits refused; and `--help` texts."""

from __future__ import annotations

from tests.sim.test_world import CLI, ncd_sim


def test_create_with_a_name(sim) -> None:  # type: ignore[no-untyped-def]
    d = str(sim.dir)
    r = ncd_sim("create", "--dir", d, "--name", "guest1")
    domid = int(r.stdout)
    assert domid == 3  # after domU1 and domU2
    r = sim.run(0, ["xenstore-read", f"/local/domain/{domid}/name"])
    assert r.stdout == "guest1\n"
    r = ncd_sim("create", "--dir", d, "--name", "guest1", check=False)
    assert (r.returncode, r.stderr) == (
        1,
        "ncd-sim: domain with name 'guest1' already exists (domain 3)\n",
    )
    r = ncd_sim("create", "--dir", d, "--name", "domU2", check=False)
    assert r.returncode == 1 and "already exists (domain 2)" in r.stderr
    for bad in ("42", "a/b", ""):
        r = ncd_sim("create", "--dir", d, "--name", bad, check=False)
        assert r.returncode == 1 and "bad domain name" in r.stderr, r.stderr
    # refused names created nothing; an unnamed domain is still domU<N>
    domid = int(ncd_sim("create", "--dir", d).stdout)
    assert domid == 4
    assert sim.run(0, ["xenstore-read", f"/local/domain/{domid}/name"]).stdout == "domU4\n"
    assert sim.run(0, ["xenstore-ls", "/local/domain"]).stdout.count("name = ") == 5


def test_create_help_names_the_option() -> None:
    import subprocess

    r = subprocess.run([*CLI, "create", "--help"], text=True, capture_output=True, timeout=30)
    assert "--name NAME" in r.stdout and "/local/domain/<domid>/name" in r.stdout
