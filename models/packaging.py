"""Packaging: which boxes a shipment's items go in (bin packing with OR-Tools CP-SAT).

Minimise the shipped volume (the boxes' outer volume; box cost breaks ties) such that each
item is in exactly one box, no box is filled beyond ``fill_share`` of its volume or its
weight limit, perishable items only go in insulated boxes, and a fragile item never shares
a box with a heavy one. A shipment whose items cannot be packed (an item larger than every
box, a perishable item and no insulated box that fits) gets ``None`` and a reason.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Packed:
    boxes: list[dict]          # [{"box": name, "items": [keys], "volume_l", "weight_kg", "insulated"}]
    volume_l: float            # outer volume shipped
    weight_kg: float           # items + boxes
    insulated: bool
    reason: str = ""


def pack(items: list[dict], boxes: list[dict], cfg: dict) -> Packed | None | str:
    """``items``: dicts with key, volume_l, weight_kg, perishable, fragile. ``boxes``: the
    configured set (name, volume_l, max_kg, insulated, weight_kg, cost). Returns a
    ``Packed``, or a one-line reason string when no packing exists."""
    from ortools.sat.python import cp_model

    fill, heavy = float(cfg["fill_share"]), float(cfg["heavy_kg"])
    if not items:
        return "no items"
    for it in items:
        fits = [b for b in boxes if it["volume_l"] <= fill * b["volume_l"] and it["weight_kg"] <= b["max_kg"]
                and (b["insulated"] or not it["perishable"])]
        if not fits:
            return f"{it['key']} fits no {'insulated ' if it['perishable'] else ''}box"
    # One candidate box per (type, copy): at most one box per item is ever needed.
    slots = [(t, c) for t in range(len(boxes)) for c in range(len(items))]
    m = cp_model.CpModel()
    scale = 100  # centilitres / 10 g
    x = {(i, j): m.NewBoolVar(f"x{i}_{j}") for i in range(len(items)) for j in range(len(slots))}
    used = [m.NewBoolVar(f"u{j}") for j in range(len(slots))]
    for i, it in enumerate(items):
        m.AddExactlyOne(x[i, j] for j in range(len(slots)))
        for j, (t, _) in enumerate(slots):
            if it["perishable"] and not boxes[t]["insulated"]:
                m.Add(x[i, j] == 0)
    for j, (t, c) in enumerate(slots):
        b = boxes[t]
        m.Add(sum(round(scale * items[i]["volume_l"]) * x[i, j] for i in range(len(items)))
              <= round(scale * fill * b["volume_l"]) * used[j])
        m.Add(sum(round(scale * items[i]["weight_kg"]) * x[i, j] for i in range(len(items)))
              <= round(scale * b["max_kg"]) * used[j])
        if c > 0:  # symmetry: copy c of a type is used only after copy c-1
            m.Add(used[j] <= used[j - 1])
        for i, a in enumerate(items):
            for k, z in enumerate(items):
                if a.get("fragile") and z["weight_kg"] >= heavy and i != k:
                    m.Add(x[i, j] + x[k, j] <= 1)
    m.Minimize(sum((round(scale * boxes[t]["volume_l"]) * 1000 + round(100 * boxes[t].get("cost", 0))) * used[j]
                   for j, (t, _) in enumerate(slots)))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(cfg.get("solve_seconds", 5))
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    status = solver.Solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return "no packing keeps fragile items away from heavy ones"
    out = []
    for j, (t, _) in enumerate(slots):
        if solver.Value(used[j]):
            inside = [items[i] for i in range(len(items)) if solver.Value(x[i, j])]
            if inside:
                b = boxes[t]
                out.append({"box": b["name"], "items": [it["key"] for it in inside], "volume_l": float(b["volume_l"]),
                            "weight_kg": round(sum(it["weight_kg"] for it in inside) + float(b.get("weight_kg", 0)), 3),
                            "insulated": bool(b["insulated"])})
    return Packed(boxes=out, volume_l=sum(b["volume_l"] for b in out), weight_kg=round(sum(b["weight_kg"] for b in out), 3),
                  insulated=any(b["insulated"] for b in out))
