"""The bubbles of a pipelined decode step, with and without micro-batches in flight.

A decode step of `batch` rows through P pipeline stages as one batch: each stage works on
the rows for its own time and waits for the others for the rest of the step, so a stage
idles `period - busy`, where the period is the whole step (every stage, every hop, the
token's way back: `Prediction.latency`).

With the batch cut into M = min(P, batch) micro-batches of `ceil(batch / M)` rows, up to M
fly at once (stage s on micro-batch k while stage s + 1 works on k - 1): each stage works M
times per period on the smaller step, and a micro-batch still has to travel every stage
and come back before its sequences' next token.  The period is the longer of the two:

    period = max(one micro-batch's step latency, M x the busiest stage's time on it)

and each stage idles `period - M x its time`.  Both periods advance every sequence by one
token: tokens per second is `batch / period`.

The per-stage times and the step latency are `planner.predict`'s (the cost model's terms);
this module only adds them up.
"""

from __future__ import annotations

import attrs

from ckeir.planner.predict import Prediction


@attrs.frozen
class Bubbles:
    """One decode period of a pipeline: `micro_batches` of `rows` rows each."""

    micro_batches: int
    rows: int
    batch: int
    period: float  # seconds in which every sequence advances one token
    busy: tuple[float, ...]  # per stage, seconds of work in a period
    # per stage, seconds idle in a period
    idle: tuple[float, ...] = attrs.field(init=False)

    @idle.default
    def _idle(self) -> tuple[float, ...]:
        return tuple(max(self.period - b, 0.0) for b in self.busy)

    @property
    def tokens_per_second(self) -> float:
        return self.batch / self.period if self.period else 0.0

    def idle_fraction(self, stage: int) -> float:
        return self.idle[stage] / self.period if self.period else 0.0

    def as_dict(self) -> dict:
        return {
            "micro_batches": self.micro_batches,
            "rows": self.rows,
            "period_seconds": self.period,
            "tokens_per_second": self.tokens_per_second,
            "busy_seconds": list(self.busy),
            "idle_seconds": list(self.idle),
            "idle_fractions": [self.idle_fraction(s) for s in range(len(self.busy))],
        }


def micro_batches(stages: int, batch: int) -> tuple[int, int]:
    """(micro-batches in flight, rows in each) for `batch` sequences over `stages` stages."""
    m = max(1, min(stages, batch))
    return m, -(-batch // m)


def one_batch(pred: Prediction, batch: int) -> Bubbles:
    """The step of all `batch` rows at once (`pred`: predicted at `batch` rows)."""
    return Bubbles(1, batch, batch, pred.latency, tuple(pred.stage_time))


def in_flight(pred: Prediction, batch: int, m: int) -> Bubbles:
    """`m` micro-batches in flight (`pred`: one micro-batch's step, at its rows)."""
    busy = tuple(m * t for t in pred.stage_time)
    period = max(pred.latency, max(busy, default=0.0))
    return Bubbles(m, -(-batch // m), batch, period, busy)


def decode_bubbles(prog, predicted=None) -> dict[str, Bubbles] | None:
    """A compiled Program's decode bubbles at its schedule's batch: `one_batch` and
    `micro_batches` (None when decode is not a pipeline).  `predicted(rows)`: the decode
    prediction at that many rows (default: `predict` for the declared cluster)."""
    from ckeir.passes.manager import funcs

    plan = prog.placement.get("decode")
    if plan is None or len(plan.stages) < 2:
        return None
    progs = {f.attr("rank", 0): f for f in funcs(prog.module) if f.attr("phase") == "decode"}
    batch = max(f.attr("slots", 1) for f in progs.values())
    if predicted is None:
        from ckeir.planner import cost
        from ckeir.planner.predict import predict

        nodes = {n.name: cost.NodeModel.of(n) for n in prog.job.cluster.nodes}

        def predicted(rows: int):
            return predict(
                plan, progs, nodes, prog.rank_nodes, prog.job.cluster, rows, context=rows
            )

    m, rows = micro_batches(len(plan.stages), batch)
    whole = one_batch(predicted(batch), batch)
    return {
        "one_batch": whole,
        "micro_batches": whole if m == 1 else in_flight(predicted(rows), batch, m),
    }


def chosen_depth(prog) -> int:
    """How many steps a batched pipeline keeps in flight: its micro-batches when the planner
    predicts them the shorter period, else 1 (the batch whole, one step at a time: when a
    step's time hardly grows with its rows, two half steps cost nearly twice one)."""
    b = decode_bubbles(prog)
    if b is None:
        return 1
    fly, whole = b["micro_batches"], b["one_batch"]
    return fly.micro_batches if fly.period < whole.period else 1
