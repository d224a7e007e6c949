"""ncd-driver.service: the same checks as the backend and frontend units."""

from __future__ import annotations

from tests.daemon import test_systemd_units as units

pytestmark = units.pytestmark


def test_verify_passes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    units.test_verify_passes(tmp_path, "ncd-driver.service", "driver")


def test_least_privilege() -> None:
    units.test_least_privilege("ncd-driver.service")


def test_exposure_level(tmp_path) -> None:  # type: ignore[no-untyped-def]
    units.test_exposure_level(tmp_path, "ncd-driver.service")


def test_conflicts_with_the_single_roles() -> None:
    d = units.directives(units.UNITS / "ncd-driver.service")
    assert d["Conflicts"] == ["ncd-backend.service ncd-frontend.service"]
