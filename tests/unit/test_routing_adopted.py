"""Which unwanted kernel routes a starting routing agent keeps (routing.agent.AdoptedRoutes):
only the ones it found in the kernel at start, and only until its BGP view is complete."""

from __future__ import annotations

from routing.agent import AdoptedRoutes


def test_before_the_kernel_was_read_nothing_is_held() -> None:
    assert AdoptedRoutes().hold(["10.0.0.0/26"], complete=False) == frozenset()


def test_adopted_routes_are_held_while_incomplete_others_are_not() -> None:
    a = AdoptedRoutes()
    a.adopt(["10.0.1.0/26", "10.0.2.0/26"])
    # a route added in this run (10.0.9.0/26) and withdrawn again is not in the hold
    assert a.hold(["10.0.9.0/26"], complete=False) == {"10.0.1.0/26", "10.0.2.0/26"}
    assert "10.0.9.0/26" not in a.hold([], complete=False)


def test_an_adopted_route_wanted_again_is_confirmed_and_no_longer_held() -> None:
    a = AdoptedRoutes()
    a.adopt(["10.0.1.0/26", "10.0.2.0/26"])
    assert a.hold(["10.0.1.0/26"], complete=False) == {"10.0.2.0/26"}
    # withdrawn later, while still incomplete: it goes (BGP told us in this run)
    assert a.hold([], complete=False) == {"10.0.2.0/26"}


def test_complete_view_holds_nothing_ever_again() -> None:
    a = AdoptedRoutes()
    a.adopt(["10.0.1.0/26"])
    assert a.hold([], complete=True) == frozenset()
    assert a.hold([], complete=False) == frozenset()


def test_destinations_compare_canonically() -> None:
    a = AdoptedRoutes()
    a.adopt(["10.0.1.5/26"])  # as a host bit set would come: same network
    assert a.hold(["10.0.1.0/26"], complete=False) == frozenset()
