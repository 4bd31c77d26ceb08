"""Direct tests of `cim-to-metaop` (issue 18): what each segment stores and loads,
worked out from the allocation annotations of the `cim` module alone (the places
`cim-allocate` wrote), against the statements the lowering emitted."""

from __future__ import annotations

import pytest

from cmswitch.dialects.cim import PLACES_ATTR, SegmentOp


def _flow_statements(flow: str) -> dict[int, list[str]]:
    """Segment id -> its statement lines (stripped)."""
    out: dict[int, list[str]] = {}
    current = None
    for line in flow.splitlines():
        text = line.split(";")[0].strip()
        if text.startswith(".segment"):
            current = int(text.split()[1])
            out[current] = []
        elif current is not None and text and not text.startswith((".end", "parallel", "}")):
            out[current].append(text)
    return out


def _segment_values(graph, first: int, last: int):
    """(flow names of the tensors operators first..last produce, of those they read
    from outside, of those that outlive them: read later or model outputs)."""
    produced, read, outlive = set(), set(), set()
    for t in graph.tensors:
        made_here = t.producer is not None and first <= t.producer <= last
        used_here = any(first <= c <= last for c in t.consumers)
        if made_here:
            produced.add(t.name)
            if t.is_output or any(c > last for c in t.consumers):
                outlive.add(t.name)
        elif used_here:
            read.add(t.name)
    return produced, read, outlive


@pytest.mark.parametrize("model, loads", [("resnet18", True), ("bert_base", False)])
def test_stores_and_loads_follow_the_places(model, loads):
    """Each segment stores exactly its on-chip tensors that outlive it and loads
    exactly the tensors it reads from outside into chip places.  ResNet-18's plan
    loads some tensors, so the load rule is exercised; both plans store some."""
    from cmswitch.api import compile as compile_model
    from conftest import MODELS

    from cmswitch.cost.graph import build_graph
    from cmswitch.transforms.segments import segment_ranges

    plan = compile_model(str(MODELS / f"{model}.onnx"), keep_module=True, jobs=1)
    statements = _flow_statements(plan.flow)
    func = next(op for op in plan.module.body.block.ops)
    segments = [op for op in func.body.block.ops if isinstance(op, SegmentOp)]
    assert len(segments) == len(statements)
    graph = build_graph(func, plan.arch)
    seen = {"MEM.store": 0, "MEM.load": 0}
    for seg, (first, last) in zip(segments, segment_ranges(graph, segments)):
        places = {k: v.data for k, v in seg.attributes[PLACES_ATTR].data.items()}
        stored = {line.split()[1].split("@")[0] for line in statements[seg.id.value.data]
                  if line.startswith("MEM.store")}
        loaded = {line.split()[1].split("@")[0] for line in statements[seg.id.value.data]
                  if line.startswith("MEM.load")}
        produced, read, outlive = _segment_values(graph, first, last)
        # exactly the tensors made here, needed later, and kept on chip but not held
        # there for the next segment (DRAM ones are written there directly)
        want = {n for n in outlive if places.get(n) in ("pool", "gb")}
        assert stored == want, (seg.id.value.data, stored ^ want)
        seen["MEM.store"] += len(stored)
        seen["MEM.load"] += len(loaded)
        # a loaded tensor comes from outside the segment into a chip place of its own
        for name in loaded:
            assert name in read and places.get(name) in ("pool", "gb"), (seg.id, name)
        # every tensor read from outside and placed on chip (not held in) is loaded
        for name in read:
            if places.get(name) in ("pool", "gb"):
                assert name in loaded, (seg.id, name)
    assert seen["MEM.store"] and (seen["MEM.load"] or not loads), seen
