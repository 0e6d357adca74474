"""Starting the ranks of a distributed schedule: local processes (one per rank, shared-memory
transport) or MPI (each process started by mpiexec takes its rank from the communicator).
Every rank compiles the same spec (the passes are deterministic), keeps its own programs and
loads only its own weights and shards from its copy of the model file.

This module sits beside `ckeir.api`, below it: a rank builds its program through the factory
it is handed (`Program` itself), so neither module imports the other's caller."""

from __future__ import annotations

import contextlib
import time

from ckeir.runtime.generate import GenerationStats

# A rank ships at most this many of its latest step records to rank 0 (for the trace): a
# long run on a deep model records hundreds of steps per token.
TRACE_EVENTS = 20_000


def rank_main(
    transport,
    make_program,
    spec_path,
    options: dict,
    ids,
    max_new_tokens: int,
    prompt=None,
    collect_logits: bool = False,
    pin: bool | None = None,
    sampling: dict | None = None,
):
    """The body of one local rank: compile (`make_program(spec_path, transport=...,
    **options)`), generate, and gather every rank's figures (`run_rank`) on rank 0, which
    returns them in rank order (the other ranks return None)."""
    with make_program(spec_path, transport=transport, **options) as prog:
        if prompt is not None:
            ids = prog.tokenizer.encode_prompt(prompt)
        figures = run_rank(
            prog, ids, max_new_tokens, transport, collect_logits, pin=pin, sampling=sampling
        )
        return transport.gather_object(figures)


def run_rank(
    prog,
    ids,
    max_new_tokens: int,
    transport=None,
    collect_logits=False,
    on_token=None,
    pin: bool | None = None,
    sampling: dict | None = None,
) -> dict:
    """Generate on this rank (every rank of a world calls it: local ranks and MPI ranks
    alike) and return what it observed, the figures `ckeir.reports.run.run_report` reads.
    With a `transport`, the clock offset to rank 0 is measured first (a collective), so
    that rank 0 can put every rank's records on its own clock.  `on_token(id)` sees each
    token as it comes.  `pin`: pool threads on CPUs of their own (None: as the Program and
    then the schedule say, else `linux.PIN_DEFAULT`: `Program.pinned_threads`); the Linux
    side is sampled around each phase.  `sampling`: `Program.stream`'s options (temperature,
    seed, ..., stop), the same on every rank: the root rank draws each token and every rank
    follows it, and every rank ends at the id whose text reaches a stop string."""
    from ckeir.runtime import linux
    from ckeir.runtime.transport.base import ClockOffset

    # the engine (weights, threads, native helpers) first: the ranks meet in clock_offset,
    # and one that meets the others there starts the generation at once
    pool = getattr(prog.engine, "pool", None)  # the reference engine has no threads
    threads = pool.thread_ids() if pool is not None else {}
    with (
        prog.pinned_threads(pin) as cpus,  # `prog.stream` inside keeps this choice
        contextlib.closing(linux.RunWatch(threads, cpus)) as watch,
    ):
        clock = transport.clock_offset() if transport is not None else ClockOffset(0.0, 0.0)
        stats = GenerationStats()
        logits = {}

        def keep(step, x):
            if collect_logits and x is not None:
                logits[step] = x.copy()

        tokens = []
        watch.mark("start")
        for token in prog.stream(ids, max_new_tokens, stats, on_logits=keep, **(sampling or {})):
            if not tokens:
                watch.mark("prefill")  # the first token comes out of prefill
            tokens.append(token)
            if on_token is not None:
                on_token(token)
        watch.mark("decode")
    figures = rank_figures(prog, stats, tokens, transport, clock, logits)
    figures["linux"] = linux_figures(prog, watch)
    return figures


def linux_figures(prog, watch) -> dict:
    """The rank's Linux side (`ckeir.runtime.linux`): its threads' figures from the watch,
    its memory (huge pages, NUMA nodes) as it stands after the run."""
    from ckeir.runtime import linux

    out = watch.figures()
    if watch.thread_ids:
        cpus = {tid: t["cpu"] for tid, t in out["threads"].items()}
        out.update(linux.memory_figures(prog.memory_regions(), cpus))
    return out


def rank_figures(prog, stats, tokens, transport, clock, logits) -> dict:
    """One rank's figures after a generation: its tokens and timings, the seconds it spent
    in native code (busy) and inside transport calls (waiting), the bytes its transport
    counted, its sends per peer, its step records and its measured clock offset."""
    engine = prog.engine
    native = dict(getattr(engine, "native_seconds", {}))
    events = list(getattr(engine, "events", ()))
    counters = transport.stats if transport is not None else None
    peers = counters.peers.values() if counters is not None else ()
    ops = counters.ops.values() if counters is not None else ()
    return {
        "rank": prog.rank or 0,
        "node": prog.rank_nodes[prog.rank or 0],
        "threads": prog.threads,
        "tokens": tokens,
        "stats": {
            "prompt_tokens": stats.prompt_tokens,
            "generated_tokens": stats.generated_tokens,
            "prefill_seconds": stats.prefill_seconds,
            "decode_seconds": stats.decode_seconds,
        },
        "native_seconds": native,
        "busy_seconds": sum(native.values()),
        "waiting_seconds": sum(op.seconds for op in ops),
        "bytes_sent": sum(p.bytes_sent for p in peers),
        "bytes_received": sum(p.bytes_received for p in peers),
        "transport": counters.as_dict() if counters is not None else {},
        "transport_kind": _kind(transport),
        "seconds_by_step": dict(getattr(engine, "stats", {})),
        # tokens run at each width of the rank's pool (native engines; `width.WidthPolicy`)
        "widths": engine.widths.figures() if hasattr(engine, "widths") else {},
        "sends": _sends(events),
        "events": events[-TRACE_EVENTS:],
        "clock_offset_seconds": clock.seconds,
        "clock_round_trip_seconds": clock.round_trip_seconds,
        "logits": logits,
    }


def _kind(transport) -> str | None:
    """'local', 'mpi', ... from the transport's class (None: no transport, one rank)."""
    if transport is None:
        return None
    return type(transport).__name__.removesuffix("Transport").lower()


def _sends(events) -> dict:
    """peer -> [messages, seconds, bytes] of this rank's point-to-point sends."""
    sends: dict = {}
    for kind, peer, nbytes, _t0, dt in events:
        if kind == "send":
            s = sends.setdefault(peer, [0, 0.0, 0])
            s[0] += 1
            s[1] += dt
            s[2] += nbytes
    return sends


def spec_links(program):
    """The cluster's declared links as a transport LinkModel (rank pairs), so local ranks
    behave like the machines the spec describes: each message is delayed by
    latency + bytes / bandwidth (the OS here cannot shape loopback traffic)."""
    from ckeir.runtime.transport.base import Link, LinkModel

    names = program.rank_nodes
    cluster = program.job.cluster
    links = {}
    for a in names:
        for b in names:
            if a < b:
                decl = cluster.link(names[a], names[b])
                if decl is not None:
                    links[(a, b)] = Link(decl.bw, decl.latency)
    return LinkModel(links)


def rank_options(program) -> dict:
    """Each local rank compiles natively; unless told otherwise, the ranks share this
    machine's CPUs instead of each taking its node's cores (threads spinning at barriers on
    an oversubscribed CPU cost more than they give)."""
    from ckeir.runtime.machine import ranks_threads

    options = dict(program._options, backend="llvm")
    if options.get("threads") is None:
        options["threads"] = ranks_threads(program)
    return options


def run_local(
    program,
    ids,
    max_new_tokens: int,
    prompt=None,
    links=None,
    collect_logits: bool = False,
    watchdog: float | None = None,
    pin: bool | None = None,
    sampling: dict | None = None,
) -> dict:
    """Run `program`'s spec on local ranks; returns rank 0's figures (`run_rank`) with
    every rank's in `ranks`.  `watchdog`: seconds a rank may stay stopped (no heartbeat, and
    /proc shows every thread stopped: SIGSTOP, a debugger) before the run ends naming it
    (None: $CKEIR_WATCHDOG_SECONDS, else 30; 0: never).
    `pin`: as for `run_rank` (None: the Program's `pin`, then the schedule's choice).
    `sampling`: as for `run_rank` (the same options reach every rank)."""
    from ckeir.runtime.transport.local import launch_local

    pin = pin if pin is not None else getattr(program, "pin", None)
    results = launch_local(
        program.world_size,
        rank_main,
        args=(
            type(program),
            program.spec_path,
            rank_options(program),
            ids,
            max_new_tokens,
            prompt,
            collect_logits,
            pin,
            sampling,
        ),
        link_model=links,
        watchdog=watchdog,
    )
    figures = results[0]  # rank 0 gathered every rank's
    out = dict(figures[0])
    out["ranks"] = figures
    return out


# -- many sequences over the ranks of a batched pipeline ------------------------------------------


def many_main(
    transport,
    make_program,
    spec_path,
    options: dict,
    prompts,
    max_new_tokens: int,
    token_budget: int | None = None,
    depth: int | None = None,
    sampling: dict | None = None,
):
    """The body of one local rank of a `generate_many` run: rank 0 drives the pipeline's
    slots with the continuous-batching scheduler (`run_many`), the other ranks serve its
    steps; rank 0 returns every rank's figures in rank order (the others None)."""
    with make_program(spec_path, transport=transport, **options) as prog:
        figures = run_many(prog, prompts, max_new_tokens, transport, token_budget, depth, sampling)
        return transport.gather_object(figures)


def run_many(
    prog,
    prompts,
    max_new_tokens: int,
    transport=None,
    token_budget=None,
    depth=None,
    sampling: dict | None = None,
) -> dict:
    """Continuations of `prompts` through the continuous-batching scheduler, on this
    rank: one process over the Program's slot engine (`transport` None), or every rank of a
    batched pipeline, rank 0 scheduling over `PipelineSlots` (up to one step in flight per
    stage) while the others run `serve_steps`.  Returns this rank's figures as `run_rank`
    does, `tokens` holding one id list per prompt on the scheduling rank, and `many` what
    the scheduler did (sequences, slots, steps, decode steps and rows, seconds; the report
    of `reports.run.many_report`).  `depth`: steps in flight at most (default: the
    planner's choice, `bubbles.chosen_depth`; 1 runs the batch one step at a time).
    `sampling`: `sampling.Sampling`'s options (greedy without), each sequence drawing with
    a sampler of its own on the scheduling rank."""
    from ckeir.runtime.pipeline_slots import PipelineSlots, serve_steps
    from ckeir.runtime.transport.base import ClockOffset

    clock = transport.clock_offset() if transport is not None else ClockOffset(0.0, 0.0)
    stats = GenerationStats()
    many: dict = {"sequences": len(prompts)}
    t0, started = time.perf_counter(), time.monotonic()
    if transport is None or transport.rank == 0:
        if transport is not None:
            from ckeir.planner.bubbles import chosen_depth

            depth = chosen_depth(prog) if depth is None else depth
            slots = PipelineSlots(prog.engine, transport, depth)
        else:
            slots = prog.slot_engine()
        many |= _schedule(slots, prompts, max_new_tokens, token_budget, started, sampling)
        if transport is not None:
            slots.close()  # the other ranks leave serve_steps
        tokens = many.pop("tokens")
        stats.prompt_tokens, stats.generated_tokens = (
            many["prompt_tokens"],
            many["generated_tokens"],
        )
    else:
        tokens = []
        many["steps"] = serve_steps(prog.engine, transport)
    many["seconds"] = time.perf_counter() - t0
    stats.decode_seconds = many.get("decode_window", {}).get("seconds", many["seconds"])
    figures = rank_figures(prog, stats, tokens, transport, clock, {})
    figures["many"] = many
    return figures


def _schedule(
    slots, prompts, max_new_tokens: int, token_budget, started: float, sampling=None
) -> dict:
    """The scheduler's run of `prompts` over a slot engine (closed on failure): their ids
    and what the scheduler counted."""
    from ckeir.runtime.batching import Scheduler, check_batched_request, check_prompts
    from ckeir.runtime.sampling import Sampling

    options = Sampling.of(**(sampling or {}))

    budget = {} if token_budget is None else {"token_budget": token_budget}
    try:
        with Scheduler(slots, **budget) as scheduler:
            prompts = check_prompts(
                prompts,
                lambda ids: check_batched_request(ids, max_new_tokens, slots.vocab, slots.context),
            )
            window: dict = {}  # the decode window: from the last sequence's first id on
            waiting = set(range(len(prompts)))

            def first_id(i: int):
                def seen(_token: int) -> None:
                    if i in waiting:
                        waiting.discard(i)
                        if not waiting:
                            m = scheduler.metrics()
                            window.update(
                                t=time.monotonic(), rows=m.decode_rows, steps=m.decode_steps
                            )

                return seen

            seqs = [
                scheduler.submit(ids, max_new_tokens, on_token=first_id(i), pick=options.pick())
                for i, ids in enumerate(prompts)
            ]
            scheduler.run()
            end = time.monotonic()
            tokens = [seq.result() for seq in seqs]
            m = scheduler.metrics()
    except BaseException:
        if hasattr(slots, "workers"):
            slots.close()
        raise
    return {
        "tokens": tokens,
        "slots": slots.slots,
        "depth": scheduler.depth,
        "steps": m.steps,
        "step_tokens": m.step_tokens,
        "prompt_tokens": m.prompt_tokens,
        "generated_tokens": m.generated_tokens,
        "decode_steps": m.decode_steps,
        "decode_rows": m.decode_rows,
        "most_in_flight": getattr(slots, "most_in_flight", 1),
        # decode once every sequence had its first id (from prefill): seconds, rows, steps
        "decode_window": {
            "seconds": end - window.get("t", end),
            "rows": m.decode_rows - window.get("rows", m.decode_rows),
            "steps": m.decode_steps - window.get("steps", m.decode_steps),
        },
        # every sequence has its first id (prefill) by then; decode runs after
        "first_token_seconds": max(
            (seq.first_token_at for seq in seqs if seq.first_token_at is not None),
            default=started,
        )
        - started,
    }


def run_local_many(
    program,
    prompts,
    max_new_tokens: int,
    links=None,
    token_budget: int | None = None,
    watchdog: float | None = None,
    depth: int | None = None,
    sampling: dict | None = None,
) -> dict:
    """`prompts` through `program`'s batched pipeline on local ranks (`run_many`); returns
    rank 0's figures, `tokens` one id list per prompt, with every rank's in `ranks`."""
    from ckeir.runtime.transport.local import launch_local

    results = launch_local(
        program.world_size,
        many_main,
        args=(
            type(program),
            program.spec_path,
            rank_options(program),
            [list(p) for p in prompts],
            max_new_tokens,
            token_budget,
            depth,
            sampling,
        ),
        link_model=links,
        watchdog=watchdog,
    )
    figures = results[0]
    out = dict(figures[0])
    out["ranks"] = figures
    return out


def mpi_many(
    spec_path, prompts, max_new_tokens: int, depth: int | None = None, **options
) -> dict | None:
    """`run_many` on this MPI rank (every rank of the job calls it, under
    `mpiexec -n N python -m mpi4py -m ckeir.ranks SPEC PROMPTS_JSON MAX_NEW [DEPTH]`): rank
    0 returns every rank's figures (`ranks`), the others None."""
    from ckeir.api import Program
    from ckeir.runtime.transport.mpi import MPITransport

    with MPITransport() as transport:
        figures = many_main(
            transport, Program, spec_path, options, prompts, max_new_tokens, None, depth
        )
        if figures is None:
            return None
        out = dict(figures[0])
        out["ranks"] = figures
        return out


if __name__ == "__main__":  # an MPI job's generate_many until `ckec run` takes prompts lists
    import json
    import sys

    depth = int(sys.argv[4]) if len(sys.argv) > 4 else None
    out = mpi_many(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), depth=depth)
    if out is not None:
        keep = ("tokens", "many", "busy_seconds", "waiting_seconds", "sends", "transport_kind")
        print(
            json.dumps(
                {
                    "tokens": out["tokens"],
                    "many": out["many"],
                    "ranks": [{k: r[k] for k in keep} for r in out["ranks"]],
                }
            )
        )
