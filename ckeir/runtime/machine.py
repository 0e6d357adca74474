"""What a run should have taken: the planner's prediction for the machine and the links a run
actually used, next to which the run report puts what it measured.

`run_prediction` is the one entry the reports use (one rank, local ranks and MPI alike)."""

from __future__ import annotations

import attrs

from ckeir.passes.manager import funcs
from ckeir.planner import cost
from ckeir.planner.predict import predict


@attrs.frozen
class RunPrediction:
    decode_seconds_per_token: float
    # (from rank, to rank) -> the link a message between them crossed (None: not modelled)
    links: dict = attrs.field(factory=dict)
    basis: dict = attrs.field(factory=dict)  # what the prediction assumed, for the report

    def hop_seconds(self, a: int, b: int, nbytes: float) -> float | None:
        link = self.links.get((min(a, b), max(a, b)))
        return None if link is None else link.time(nbytes)


def run_prediction(prog, context: int, links=None) -> RunPrediction:
    """Decode seconds per token at `context` cached tokens for `prog` as it ran; `links`: the
    transport's simulated `LinkModel` (None: the spec's declared links)."""
    job, ranks = prog.job, prog.rank_nodes
    nodes = {n.name: cost.NodeModel.of(n) for n in job.cluster.nodes}
    programs = {f.attr("rank", 0): f for f in funcs(prog.module) if f.attr("phase") == "decode"}
    plan = prog.placement.get("decode")
    pairs = {}
    for a in ranks:
        for b in ranks:
            if a < b:
                if links is not None:
                    sim = links.link(a, b)
                    pairs[(a, b)] = (
                        None if sim is None else cost.LinkModel(sim.bandwidth, sim.latency)
                    )
                else:
                    decl = job.cluster.link(ranks[a], ranks[b])
                    pairs[(a, b)] = None if decl is None else cost.LinkModel(decl.bw, decl.latency)
    if plan is None or not programs:
        seconds = 0.0
    else:
        seconds = predict(plan, programs, nodes, ranks, job.cluster, 1, context=context).latency
    return RunPrediction(
        seconds,
        pairs,
        {"machine": "declared cluster", "links": "simulated" if links is not None else "declared"},
    )
