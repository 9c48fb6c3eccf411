"""The route solver and packing on their own: Solomon VRPTW with an independent checker,
insertion into planned routes, same-day pinning, the one routing interface, the Solomon
bench command, and CP-SAT packing. No Spark, no world."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bundlecast.models import packaging, routing

SOLOMON = Path(__file__).resolve().parents[2] / "shared" / "data" / "solomon_vrptw" / "instances"
DELIVERY = date(2026, 11, 21)


def _square(n_planned=6):
    """A depot at the origin, two vehicles with planned stops on a ring, wide windows."""
    angles = np.linspace(0, 2 * np.pi, n_planned, endpoint=False)
    xy = np.vstack([[0, 0], np.column_stack([10 * np.cos(angles), 10 * np.sin(angles)]),
                    [[10.5, 0.5], [60, 60]]])  # a stop next to a planned one, and a far one
    n = len(xy)
    d = routing.euclidean(xy)
    ready = np.zeros(n)
    due = np.full(n, 500.0)
    due[1] = 40.0  # a tight planned window
    p = routing.Problem(name="ring", dist=d, travel=d, load=np.ones((n, 1)), ready=ready, due=due,
                        service=np.full(n, 2.0), capacity=np.full((2, 1), 20.0), xy=xy,
                        required=np.array([True] * (n_planned + 1) + [False, False]),
                        penalty=np.array([0.0] * (n_planned + 1) + [50.0, 50.0]),
                        vehicle_of=np.array([-1] + [k % 2 for k in range(n_planned)] + [-1, -1]))
    planned = [[k for k in range(1, n_planned + 1) if (k - 1) % 2 == v] for v in range(2)]
    return p, planned


def test_solver_and_independent_checker_on_a_solomon_instance():
    if not SOLOMON.exists():
        pytest.skip("shared data not present")
    p = routing.load_solomon(SOLOMON / "C101.txt")
    assert p.n == 101 and p.vehicles == 25 and p.capacity[0, 0] == 200
    solved = routing.solve(p, "ortools", 2)
    assert routing.check(p, solved.routes) == []
    assert routing.distance(p, solved.routes) < 828.94 * 1.10  # best known 828.94
    # The checker is independent of the solver: it finds planted violations.
    bad = [list(r) for r in solved.routes]
    first = next(r for r in bad if r)
    assert any("visited twice" in v for v in routing.check(p, bad + [[first[0]]]))
    assert any("not served" in v for v in routing.check(p, [r[1:] if r else r for r in bad]))
    late = sorted(range(1, p.n), key=lambda i: -p.ready[i])[:3]
    assert any("after its window" in v for v in routing.check(p, [late] + [[x for x in r if x not in late] for r in bad]))


def test_solomon_loader_gives_one_line_errors(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("not an instance\n")
    with pytest.raises(routing.RoutingError, match="not a Solomon instance"):
        routing.load_solomon(f)


def test_insertion_keeps_planned_stops_and_drops_the_uneconomic_one():
    p, planned = _square()
    solved = routing.insert(p, planned, time_limit=5, solution_limit=100)
    assert routing.check(p, solved.routes) == []
    for v, route in enumerate(solved.routes):
        assert [n for n in route if p.required[n]] == planned[v]  # same vehicle, same order
    served = {n for r in solved.routes for n in r}
    assert 7 in served          # next to a planned stop: cheap
    assert 8 not in served      # 85 units away and back for a value of 50: dropped
    # the marginal cost of each stop alone, on the planned routes
    costs = routing.insertion_costs(p, planned, [7, 8])
    assert costs[0] < 2 and costs[1] > 100


def test_on_the_delivery_day_a_loaded_shipment_stays_on_its_van():
    """A same-day re-plan (after a cancel) may re-sequence a van's proactive stops, but a
    parcel already loaded on van A is not moved to van B, even where B passes closer."""
    from bundlecast.jobs.core.config import load_config
    from bundlecast.jobs.proactive import routes
    cfg = load_config(state_home=Path("/nonexistent"), environ={})
    day = DELIVERY
    at = lambda h: pd.Timestamp(day) + pd.Timedelta(hours=h)  # noqa: E731
    stops = pd.DataFrame({"route_id": ["A", "A", "B", "B"], "lat": [52.05, 52.06, 52.0, 52.0],
                          "lon": [13.0, 13.0, 13.08, 13.09], "window_start": [at(8)] * 4, "window_end": [at(18)] * 4,
                          "load_kg": [5.0] * 4})
    vehicles = pd.DataFrame({"route_id": ["A", "B"], "capacity_kg": [500.0, 500.0], "shift_start": [at(7)] * 2,
                             "shift_end": [at(19)] * 2})
    props = pd.DataFrame({"lat": [52.0], "lon": [13.085], "window_start": [at(8)], "window_end": [at(18)],
                          "weight_kg": [1.0], "volume_l": [2.0], "value": [1000.0], "route_id": ["A"]})
    for loaded, van in ((False, 1), (True, 0)):
        problem, planned, _ = routes.day_problem((52.0, 13.0), stops, props, vehicles, day, cfg, loaded=loaded)
        solved = routing.insert(problem, planned, time_limit=5, solution_limit=100)
        assert routing.check(problem, solved.routes) == []
        assert 5 in solved.routes[van], (loaded, solved.routes)  # node 5: the proactive stop


def test_routing_bench_command_writes_checked_results_and_routes(tmp_path):
    if not SOLOMON.exists():
        pytest.skip("shared data not present")
    import json

    from bundlecast.jobs.tools import routing_bench
    frame = routing_bench.run(SOLOMON, 1.0, ["ortools", "pyvrp"], tmp_path, SOLOMON.parent / "solomon_100_bks.csv",
                              only=["C101", "R201"], progress=lambda m: None)
    assert len(frame) == 4 and frame.feasible.all() and (frame.gap_pct > -0.01).all()
    routes = json.loads((tmp_path / "routes" / "ortools" / "C101.json").read_text())
    served = sorted(c for r in routes["routes"] for c in r)
    assert served == list(range(1, 101))  # the instance's customer numbers, each once
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ortools"]["feasible"] == 2 and "mean_gap_pct" in summary["pyvrp"]


PACK_CFG = {"fill_share": 0.9, "heavy_kg": 3.0, "solve_seconds": 5, "boxes": [
    {"name": "S", "volume_l": 6, "max_kg": 5, "weight_kg": 0.2, "insulated": False, "cost": 0.3},
    {"name": "M", "volume_l": 15, "max_kg": 12, "weight_kg": 0.4, "insulated": False, "cost": 0.5},
    {"name": "cool-S", "volume_l": 8, "max_kg": 6, "weight_kg": 0.5, "insulated": True, "cost": 1.5}]}


def _item(key, v, w, perishable=False, fragile=False):
    return {"key": key, "volume_l": v, "weight_kg": w, "perishable": perishable, "fragile": fragile}


def test_packing_minimises_volume_and_respects_perishables_and_fragile_items():
    two_small = packaging.pack([_item("a", 2, 1), _item("b", 2, 1)], PACK_CFG["boxes"], PACK_CFG)
    assert [b["box"] for b in two_small.boxes] == ["S"] and two_small.volume_l == 6
    cold = packaging.pack([_item("milk", 1, 1, perishable=True), _item("soap", 1, 0.5)], PACK_CFG["boxes"], PACK_CFG)
    milk_box = next(b for b in cold.boxes if "milk" in b["items"])
    assert milk_box["insulated"] and cold.insulated
    split = packaging.pack([_item("glass", 1, 0.5, fragile=True), _item("iron", 1, 4)], PACK_CFG["boxes"], PACK_CFG)
    assert len(split.boxes) == 2
    assert isinstance(packaging.pack([_item("sofa", 500, 40)], PACK_CFG["boxes"], PACK_CFG), str)


# --------------------------------------------------------------------------- the job


def test_routing_is_one_interface_and_insertion_refuses_a_solver_that_cannot_pin():
    """``solve``/``insert`` pick the solver by name; PyVRP cannot keep planned stops on
    their van and in order, so asking it to insert is a clear error, not a silent re-plan."""
    p = routing.load_solomon(SOLOMON / "C101.txt") if SOLOMON.exists() else None
    if p is None:
        pytest.skip("shared data not present")
    with pytest.raises(routing.RoutingError, match="cannot insert"):
        routing.insert(p, [[] for _ in range(p.vehicles)], time_limit=1, solver="pyvrp")
    with pytest.raises(routing.RoutingError, match="unknown solver"):
        routing.solve(p, "simplex", 1)
