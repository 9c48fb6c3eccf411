"""Vehicle routing with time windows: the problem, an independent feasibility check, the
OR-Tools solver bundlecast uses, and PyVRP as the reference peer.

One ``Problem`` type serves both uses:

* building routes from scratch (the Solomon benchmark, ``bundlecast routing bench``);
* inserting proactive stops into planned routes (``insert``): planned stops are
  mandatory, stay on their vehicle, in their order and inside their windows; proactive
  stops are optional with a drop penalty equal to their value, so an uneconomic or
  infeasible one is dropped instead of breaking a route. The planned routes warm-start
  the search.

Times and distances are floats in the problem's own units (Solomon: distance = time;
the delivery network: km and minutes). The solvers work on integers (``SCALE`` per unit,
travel times rounded **up**), so whatever they return is feasible in float arithmetic too;
``check`` re-verifies every solution in floats without trusting the solver.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SCALE = 1000  # solver integer units per problem unit (0.001 distance/time)
TOLERANCE = 1e-6


class RoutingError(ValueError):
    """A problem or solution that cannot be used (bad file, bad route)."""


@dataclass
class Problem:
    """Node 0 is the depot. ``dist`` is a (n x n) distance matrix, ``travel`` the matching
    travel-time matrix (Solomon: the same). ``load`` has one column per capacity dimension
    (weight, volume ...). Vehicles all start and end at the depot within [ready[0], due[0]],
    or within their own shift when ``shifts`` is given."""
    name: str
    dist: np.ndarray
    travel: np.ndarray
    load: np.ndarray            # (n, d)
    ready: np.ndarray
    due: np.ndarray
    service: np.ndarray
    capacity: np.ndarray        # (vehicles, d)
    xy: np.ndarray | None = None
    shifts: np.ndarray | None = None      # (vehicles, 2): start, end
    required: np.ndarray | None = None    # bool per node; default: every customer
    penalty: np.ndarray | None = None     # drop penalty per optional node (distance units)
    vehicle_of: np.ndarray | None = None  # fixed vehicle per node (-1: any)
    labels: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.dist)

    @property
    def vehicles(self) -> int:
        return len(self.capacity)

    def shift(self, v: int) -> tuple[float, float]:
        if self.shifts is not None:
            return float(self.shifts[v, 0]), float(self.shifts[v, 1])
        return float(self.ready[0]), float(self.due[0])

    def is_required(self, node: int) -> bool:
        return True if self.required is None else bool(self.required[node])


def euclidean(xy: np.ndarray) -> np.ndarray:
    diff = xy[:, None, :] - xy[None, :, :]
    return np.sqrt((diff ** 2).sum(axis=2))


def load_solomon(path: str | Path) -> Problem:
    """A Solomon (1987) instance: name, VEHICLE NUMBER CAPACITY, then one row per node
    ``CUST_NO X Y DEMAND READY DUE SERVICE`` (row 0 the depot). Distances are Euclidean,
    unrounded, and travel time equals distance."""
    path = Path(path)
    try:
        lines = [ln.split() for ln in path.read_text().splitlines()]
    except OSError as exc:
        raise RoutingError(f"{path}: cannot read ({exc.strerror})") from None
    lines = [ln for ln in lines if ln]
    try:
        at = next(i for i, ln in enumerate(lines) if ln[0].upper() == "NUMBER")
        vehicles, capacity = int(lines[at + 1][0]), int(lines[at + 1][1])
        rows = np.array([[float(x) for x in ln] for ln in lines if len(ln) == 7 and ln[0].isdigit()])
    except (StopIteration, ValueError, IndexError):
        raise RoutingError(f"{path}: not a Solomon instance (expected VEHICLE NUMBER/CAPACITY and 7-column rows)") from None
    if len(rows) < 2 or rows[0, 0] != 0:
        raise RoutingError(f"{path}: not a Solomon instance (no depot row 0 or no customers)")
    xy = rows[:, 1:3]
    d = euclidean(xy)
    return Problem(name=lines[0][0], dist=d, travel=d, load=rows[:, 3:4], ready=rows[:, 4], due=rows[:, 5],
                   service=rows[:, 6], capacity=np.full((vehicles, 1), float(capacity)), xy=xy,
                   labels=[str(int(c)) for c in rows[:, 0]])


# --------------------------------------------------------------------------- checking

def route_schedule(p: Problem, v: int, route: list[int]) -> list[float]:
    """Arrival time at each stop of ``route`` (earliest departure, waiting allowed), plus the
    return time to the depot as the last element."""
    start, _ = p.shift(v)
    t, prev, arrivals = start, 0, []
    for node in route:
        t = max(t + p.travel[prev, node], p.ready[node])
        arrivals.append(t)
        t += p.service[node]
        prev = node
    arrivals.append(t + p.travel[prev, 0])
    return arrivals


def distance(p: Problem, routes: list[list[int]]) -> float:
    return float(sum(p.dist[0, r[0]] + sum(p.dist[a, b] for a, b in zip(r, r[1:])) + p.dist[r[-1], 0]
                     for r in routes if r))


def check(p: Problem, routes: list[list[int]]) -> list[str]:
    """Every violation of the solution, recomputed in floats from the problem alone: each
    required node exactly once and no node twice, capacity per dimension, arrival within
    each window, back at the depot within the shift, fixed vehicles honoured."""
    problems, seen = [], {}
    if len(routes) > p.vehicles:
        problems.append(f"{len(routes)} routes for {p.vehicles} vehicles")
    for v, route in enumerate(routes):
        for node in route:
            if not 0 < node < p.n:
                problems.append(f"route {v}: unknown node {node}")
                return problems
            if node in seen:
                problems.append(f"node {node} visited twice (routes {seen[node]} and {v})")
            seen[node] = v
            if p.vehicle_of is not None and p.vehicle_of[node] >= 0 and p.vehicle_of[node] != v:
                problems.append(f"node {node} is fixed to vehicle {p.vehicle_of[node]}, served by {v}")
        if not route:
            continue
        load = p.load[route].sum(axis=0)
        cap = p.capacity[min(v, p.vehicles - 1)]
        if np.any(load > cap + TOLERANCE):
            problems.append(f"route {v}: load {load.tolist()} above capacity {cap.tolist()}")
        arrivals = route_schedule(p, v, route)
        for node, t in zip(route, arrivals):
            if t > p.due[node] + TOLERANCE:
                problems.append(f"route {v}: node {node} reached at {t:.3f}, after its window closes at {p.due[node]:g}")
        if arrivals[-1] > p.shift(v)[1] + TOLERANCE:
            problems.append(f"route {v}: back at the depot at {arrivals[-1]:.3f}, after {p.shift(v)[1]:g}")
    missing = [i for i in range(1, p.n) if p.is_required(i) and i not in seen]
    if missing:
        problems.append(f"{len(missing)} required nodes not served (e.g. {missing[:5]})")
    return problems


# --------------------------------------------------------------------------- OR-Tools

@dataclass
class Solved:
    routes: list[list[int]]
    seconds: float
    solver: str
    status: str = "ok"

    def dropped(self, p: Problem) -> list[int]:
        served = {n for r in self.routes for n in r}
        return [i for i in range(1, p.n) if i not in served]


def _int(x) -> np.ndarray:
    return np.rint(np.asarray(x, dtype=float) * SCALE).astype(np.int64)


def solve_ortools(p: Problem, time_limit: float, initial: list[list[int]] | None = None,
                  keep_order: bool = False, solution_limit: int | None = None, log: bool = False) -> Solved:
    """Minimise total distance (plus the penalties of dropped optional nodes) with guided
    local search for ``time_limit`` seconds. ``initial`` (one list of nodes per vehicle)
    warm-starts the search; ``keep_order`` keeps the planned nodes of each route in their
    initial order (proactive insertion must not reshuffle a driver's announced stops).
    ``solution_limit`` stops after that many improving solutions: a run that ends on it
    (not on the time limit) is deterministic, which keeps re-runs identical."""
    from ortools.constraint_solver import pywrapcp, routing_enums_pb2

    started = time.perf_counter()
    manager = pywrapcp.RoutingIndexManager(p.n, p.vehicles, 0)
    routing = pywrapcp.RoutingModel(manager)
    dist = _int(p.dist)
    travel = np.ceil(np.asarray(p.travel, float) * SCALE - 1e-9).astype(np.int64)  # up: float-feasible
    service = _int(p.service)
    node_of = manager.IndexToNode

    arc = routing.RegisterTransitMatrix(dist.tolist())
    routing.SetArcCostEvaluatorOfAllVehicles(arc)
    time_cb = routing.RegisterTransitMatrix((travel + service[:, None]).tolist())
    shifts = np.array([p.shift(v) for v in range(p.vehicles)])
    horizon = int(_int(max(shifts[:, 1].max(), p.due.max())))
    routing.AddDimension(time_cb, horizon, horizon, False, "time")
    tdim = routing.GetDimensionOrDie("time")
    ready, due = _int(p.ready), np.floor(np.asarray(p.due, float) * SCALE + 1e-9).astype(np.int64)
    for node in range(1, p.n):
        tdim.CumulVar(manager.NodeToIndex(node)).SetRange(int(ready[node]), int(due[node]))
    for v in range(p.vehicles):
        lo, hi = (int(x) for x in _int(shifts[v]))
        tdim.CumulVar(routing.Start(v)).SetRange(lo, hi)
        tdim.CumulVar(routing.End(v)).SetRange(lo, hi)
        routing.AddVariableMinimizedByFinalizer(tdim.CumulVar(routing.End(v)))
    loads = _int(p.load)
    caps = np.floor(np.asarray(p.capacity, float) * SCALE + 1e-9).astype(np.int64)
    for d in range(p.load.shape[1]):
        cb = routing.RegisterUnaryTransitVector(loads[:, d].tolist())
        routing.AddDimensionWithVehicleCapacity(cb, 0, caps[:, d].tolist(), True, f"load{d}")
    for node in range(1, p.n):
        index = manager.NodeToIndex(node)
        if not p.is_required(node):
            routing.AddDisjunction([index], int(_int(p.penalty[node])) if p.penalty is not None else 10 ** 12)
        if p.vehicle_of is not None and p.vehicle_of[node] >= 0:
            allowed = [int(p.vehicle_of[node])] if p.is_required(node) else [-1, int(p.vehicle_of[node])]
            routing.VehicleVar(index).SetValues(allowed)
    if keep_order and initial:
        solver = routing.solver()
        for route in initial:
            planned = [n for n in route if p.is_required(n)]
            for a, b in zip(planned, planned[1:]):
                solver.Add(tdim.CumulVar(manager.NodeToIndex(a)) < tdim.CumulVar(manager.NodeToIndex(b)))

    params = pywrapcp.DefaultRoutingSearchParameters()
    params.first_solution_strategy = routing_enums_pb2.FirstSolutionStrategy.PARALLEL_CHEAPEST_INSERTION
    params.local_search_metaheuristic = routing_enums_pb2.LocalSearchMetaheuristic.GUIDED_LOCAL_SEARCH
    params.time_limit.FromMilliseconds(max(1, int(time_limit * 1000)))
    params.log_search = log
    if solution_limit:
        params.solution_limit = int(solution_limit)
    if initial:
        routing.CloseModelWithParameters(params)
        start = routing.ReadAssignmentFromRoutes([[manager.NodeToIndex(n) for n in r] for r in initial], True)
        solution = routing.SolveFromAssignmentWithParameters(start, params) if start else None
        if solution is None:
            solution = routing.SolveWithParameters(params)
    else:
        solution = routing.SolveWithParameters(params)
    if solution is None:
        return Solved([[] for _ in range(p.vehicles)], time.perf_counter() - started, "ortools", "infeasible")
    routes = []
    for v in range(p.vehicles):
        index, route = solution.Value(routing.NextVar(routing.Start(v))), []
        while not routing.IsEnd(index):
            route.append(node_of(index))
            index = solution.Value(routing.NextVar(index))
        routes.append(route)
    return Solved(routes, time.perf_counter() - started, "ortools")


# --------------------------------------------------------------------------- PyVRP (reference peer)

def solve_pyvrp(p: Problem, time_limit: float, seed: int = 0) -> Solved:
    """The same problem with PyVRP (hybrid genetic search), same integer scaling, same
    time limit. Used by the benchmark as the reference peer."""
    from pyvrp import Model
    from pyvrp.stop import MaxRuntime

    started = time.perf_counter()
    m = Model()
    xy = p.xy if p.xy is not None else np.zeros((p.n, 2))
    locations = [m.add_location(x=float(x), y=float(y)) for x, y in xy]
    ready, due, service = _int(p.ready), np.floor(np.asarray(p.due, float) * SCALE + 1e-9).astype(np.int64), _int(p.service)
    depot = m.add_depot(locations[0], tw_early=int(ready[0]), tw_late=int(due[0]))
    m.add_vehicle_type(num_available=p.vehicles, capacity=[int(c) for c in _int(p.capacity[0])], start_depot=depot,
                       end_depot=depot, tw_early=int(ready[0]), tw_late=int(due[0]))
    for node in range(1, p.n):
        m.add_client(locations[node], delivery=[int(x) for x in _int(p.load[node])], service_duration=int(service[node]),
                     tw_early=int(ready[node]), tw_late=int(due[node]))
    dist = _int(p.dist)
    travel = np.ceil(np.asarray(p.travel, float) * SCALE - 1e-9).astype(np.int64)
    for i, a in enumerate(locations):
        for j, b in enumerate(locations):
            m.add_edge(a, b, distance=int(dist[i, j]), duration=int(travel[i, j]))
    result = m.solve(stop=MaxRuntime(time_limit), seed=seed, display=False, collect_stats=False)
    # clients are numbered after the single depot, in the order they were added (node 1 ...)
    routes = [[1 + int(a.idx) for a in r if a.is_client()]
              for r in result.best.routes()]
    return Solved(routes, time.perf_counter() - started, "pyvrp", "ok" if result.is_feasible() else "infeasible")


SOLVERS = {"ortools": solve_ortools, "pyvrp": solve_pyvrp}


def solve(p: Problem, solver: str, time_limit: float) -> Solved:
    """Build routes from scratch with ``solver`` (``SOLVERS``)."""
    if solver not in SOLVERS:
        raise RoutingError(f"unknown solver {solver!r}: expected one of {sorted(SOLVERS)}")
    return SOLVERS[solver](p, time_limit)


def vehicles_used(routes: list[list[int]]) -> int:
    return sum(1 for r in routes if r)


def gap(found: float, best: float) -> float:
    return (found - best) / best if best and math.isfinite(found) else float("nan")


# --------------------------------------------------------------------------- insertion

def _insert_ortools(p: Problem, planned: list[list[int]], time_limit: float, solution_limit: int | None) -> Solved:
    return solve_ortools(p, time_limit, initial=planned, keep_order=True, solution_limit=solution_limit)


# Insertion needs pinned vehicles, kept order, priced drops and a warm start: OR-Tools has
# all four; PyVRP (the better from-scratch solver) has none of the pinning, so it is not here.
INSERTERS = {"ortools": _insert_ortools}


def insert(p: Problem, planned: list[list[int]], time_limit: float, solution_limit: int | None = None,
           solver: str = "ortools") -> Solved:
    """Add the optional nodes of ``p`` to the ``planned`` routes (one list per vehicle).
    Planned nodes are required, stay on their vehicle (``p.vehicle_of``) and in their
    order; optional ones carry their drop penalty. Starts from the planned routes."""
    if solver not in INSERTERS:
        raise RoutingError(f"solver {solver!r} cannot insert into planned routes (pinned stops, kept order, "
                           f"priced drops): expected one of {sorted(INSERTERS)}")
    return INSERTERS[solver](p, planned, time_limit, solution_limit)


def insertion_costs(p: Problem, routes: list[list[int]], nodes: list[int]) -> np.ndarray:
    """The marginal distance of adding each of ``nodes`` alone to the best position of the
    current ``routes`` that keeps every window, shift and capacity (inf where none does):
    the consolidation potential of a location on that day."""
    out = np.full(len(nodes), np.inf)
    loads = [p.load[r].sum(axis=0) if r else np.zeros(p.load.shape[1]) for r in routes]
    for k, node in enumerate(nodes):
        for v, route in enumerate(routes):
            if np.any(loads[v] + p.load[node] > p.capacity[v] + TOLERANCE):
                continue
            path = [0, *route, 0]
            for pos in range(len(route) + 1):
                added = p.dist[path[pos], node] + p.dist[node, path[pos + 1]] - p.dist[path[pos], path[pos + 1]]
                if added >= out[k]:
                    continue
                trial = route[:pos] + [node] + route[pos:]
                arrivals = route_schedule(p, v, trial)
                if all(t <= p.due[n] + TOLERANCE for n, t in zip(trial, arrivals)) and arrivals[-1] <= p.shift(v)[1] + TOLERANCE:
                    out[k] = added
    return out
