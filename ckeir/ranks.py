"""Starting the ranks of a distributed schedule: local processes (one per rank, shared-memory
transport) or MPI (each process started by mpiexec takes its rank from the communicator).
Every rank compiles the same spec (the passes are deterministic), keeps its own programs and
loads only its own weights and shards from its copy of the model file.

This module sits beside `ckeir.api`, below it: a rank builds its program through the factory
it is handed (`Program` itself), so neither module imports the other's caller."""

from __future__ import annotations

from ckeir.runtime.generate import GenerationStats


def rank_main(
    transport,
    make_program,
    spec_path,
    options: dict,
    ids,
    max_new_tokens: int,
    prompt=None,
    collect_logits: bool = False,
):
    """The body of one rank: compile (`make_program(spec_path, transport=..., **options)`),
    generate, and return tokens, stats and evidence (and, on the rank that computes them,
    each step's logits)."""
    with make_program(spec_path, transport=transport, **options) as prog:
        if prompt is not None:
            ids = prog.tokenizer.encode(prompt)
        stats = GenerationStats()
        logits = {}

        def keep(step, x):
            if collect_logits and x is not None:
                logits[step] = x.copy()

        tokens = list(prog.stream(ids, max_new_tokens, stats, on_logits=keep))
        engine = prog.engine
        return {
            "rank": transport.rank,
            "tokens": tokens,
            "stats": {
                "prompt_tokens": stats.prompt_tokens,
                "generated_tokens": stats.generated_tokens,
                "prefill_seconds": stats.prefill_seconds,
                "decode_seconds": stats.decode_seconds,
            },
            "steps": dict(engine.stats),
            "events": engine.events[-2000:],
            "transport": transport.stats.as_dict() if hasattr(transport, "stats") else {},
            "logits": logits,
        }


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


def measured_hops(result: dict) -> dict:
    """Mean seconds and bytes of each (sender, receiver) pair's sends, from every rank's
    events."""
    hops: dict = {}
    for r in result["ranks"]:
        for kind, peer, nbytes, _t0, dt in r["events"]:
            if kind == "send":
                h = hops.setdefault((r["rank"], peer), [0, 0.0, 0])
                h[0] += 1
                h[1] += dt
                h[2] += nbytes
    return {k: {"count": c, "seconds": t / c, "bytes": b / c} for k, (c, t, b) in hops.items()}


def _rank_options(program) -> dict:
    """Each local rank compiles natively; unless told otherwise, the ranks share this
    machine's CPUs instead of each taking its node's cores (threads spinning at barriers on
    an oversubscribed CPU cost more than they give)."""
    import os

    options = dict(program._options, backend="llvm")
    if options.get("threads") is None:
        cpus = len(os.sched_getaffinity(0))
        options["threads"] = max(1, cpus // program.world_size)
    return options


def run_local(
    program,
    ids,
    max_new_tokens: int,
    prompt=None,
    links=None,
    collect_logits: bool = False,
    watchdog: float | None = None,
) -> dict:
    """Run `program`'s spec on local ranks; returns rank 0's result with every rank's in
    `ranks`.  `watchdog`: seconds without a heartbeat after which a rank is taken for
    stopped and the run ends (None: $CKEIR_WATCHDOG_SECONDS, else 30; 0: never)."""
    from ckeir.runtime.transport.local import launch_local

    results = launch_local(
        program.world_size,
        rank_main,
        args=(
            type(program),
            program.spec_path,
            _rank_options(program),
            ids,
            max_new_tokens,
            prompt,
            collect_logits,
        ),
        link_model=links,
        watchdog=watchdog,
    )
    out = dict(results[0])
    out["ranks"] = results
    return out
