"""The compile pipeline up to the backend: `.cke` spec → llama config + target → IR → passes.

Everything here is target-independent except the `Target` (cache sizes, cores) the tile pass
reads from the cluster spec.  The backend (`ckeir.backends.llvm`) takes the module from here.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from ckeir.errors import CkeError
from ckeir.frontend import load_spec
from ckeir.ir.core import Operation
from ckeir.models.llama import LlamaConfig, build_module
from ckeir.passes import PASSES, PassContext, PassManager, Target, parse_pipeline
from ckeir.passes.manager import DEFAULT_PIPELINE

PREFILL_CHUNK = 256  # prompt rows per prefill call; longer prompts run in chunks


@attrs.define
class Job:
    """One schedule of a spec, resolved: what to build and for which machine."""

    spec_path: Path
    spec: object
    schedule: object
    model: object
    cluster: object
    config: LlamaConfig
    target: Target


def default_pipeline() -> str:
    return ",".join(p for p in DEFAULT_PIPELINE if p in PASSES)


def config_from_decl(model) -> LlamaConfig:
    """The llama hyper-parameters a model declaration states (random weights: all of them)."""
    if model.family != "llama":
        raise CkeError(
            f"model {model.name}: family '{model.family}' is not supported", loc=model.loc
        )
    missing = [
        k
        for k in ("vocab", "hidden", "layers", "heads", "ffn", "context")
        if getattr(model, k) is None
    ]
    if missing:
        raise CkeError(
            f"model {model.name}: hyper-parameters {', '.join(missing)} are unknown "
            "(state them, or load weights from a file that has them)",
            loc=model.loc,
        )
    return LlamaConfig(
        vocab=model.vocab,
        hidden=model.hidden,
        layers=model.layers,
        heads=model.heads,
        kv_heads=model.kv_heads or model.heads,
        ffn=model.ffn,
        context=model.context,
        norm_eps=float(model.norm_eps),
        rope_theta=float(model.rope_theta),
        tie_embeddings=bool(model.tie_embeddings),
        rope_style=model.rope_style or "halves",
    )


def target_of(node) -> Target:
    return Target(cores=node.cores, l2=node.l2, l3=node.l3, dram_bw=node.dram_bw)


def resolve(spec_path, schedule: str | None = None) -> Job:
    path = Path(spec_path)
    spec = load_spec(path)
    sched = spec.schedule(schedule)
    model, cluster = spec.model_of(sched), spec.cluster_of(sched)
    config = config_from_decl(model)
    first_node = cluster.nodes[0]
    return Job(path, spec, sched, model, cluster, config, target_of(first_node))


def build_ir(job: Job, phases=("prefill", "decode")) -> Operation:
    return build_module(job.config, phases, max_tokens=min(PREFILL_CHUNK, job.config.context))


def run_passes(module: Operation, job: Job, pipeline: str | None = None, **pm_options):
    """Run the pipeline; returns (module, pass manager, context)."""
    pm = PassManager(parse_pipeline(pipeline or default_pipeline()), **pm_options)
    ctx = PassContext(target=job.target, options={"schedule": job.schedule})
    pm.run(module, ctx)
    return module, pm, ctx
