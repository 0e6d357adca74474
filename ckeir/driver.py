"""The compile pipeline up to the backend: `.cke` spec → llama config + target → IR → passes.

Everything here is target-independent except the `Target` (cache sizes, cores) the tile pass
reads from the cluster spec.  The backend (`ckeir.backends.llvm`) takes the module from here.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from ckeir.formats import FORMATS
from ckeir.frontend import load_spec, with_model_params
from ckeir.ir.core import Operation
from ckeir.ir.types import quant_type
from ckeir.models.files import ModelFile, open_model_file
from ckeir.models.transformer import ModelConfig, build_module, config_from_decl
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
    config: ModelConfig
    target: Target
    model_file: ModelFile | None = None  # None for random weights

    def stored_formats(self) -> dict[str, str]:
        """Weight name -> the format it is stored in (f32 for random weights)."""
        if self.model_file is None:
            return {}
        return {n: t.format for n, t in self.model_file.tensors.items()}


def default_pipeline() -> str:
    return ",".join(p for p in DEFAULT_PIPELINE if p in PASSES)


def target_of(node) -> Target:
    return Target(cores=node.cores, l2=node.l2, l3=node.l3, dram_bw=node.dram_bw)


def resolve(spec_path, schedule: str | None = None) -> Job:
    path = Path(spec_path)
    spec = load_spec(path)
    sched = spec.schedule(schedule)
    model = spec.model_of(sched)
    model_file = None
    if not model.weights.is_random:
        file_path = model.weights.resolve_path()
        model_file = open_model_file(model.weights.kind, file_path)
        if model.weights.kind == "gguf":
            spec = with_model_params(spec, model.name, model_file.params(), str(file_path))
            sched = spec.schedules[sched.name]
            model = spec.model_of(sched)
    cluster = spec.cluster_of(sched)
    config = config_from_decl(model, model_file)
    if model_file is not None:  # before any IR is built: the tensors bound the sizes stated
        model_file.check_config(config)
        model_file.check_formats(sched.weight_format or "keep", sched.weight_except)
    return Job(path, spec, sched, model, cluster, config, target_of(cluster.nodes[0]), model_file)


def build_ir(job: Job, phases=("prefill", "decode")) -> Operation:
    types = {n: quant_type(f) for n, f in job.stored_formats().items() if f in FORMATS}
    return build_module(
        job.config,
        phases,
        max_tokens=min(PREFILL_CHUNK, job.config.context),
        weight_types=types,
        batch=job.schedule.batch,
    )


def run_passes(
    module: Operation, job: Job, pipeline: str | None = None, single_rank=False, **pm_options
):
    """Run the pipeline; returns (module, pass manager, context)."""
    pm = PassManager(parse_pipeline(pipeline or default_pipeline()), **pm_options)
    ctx = PassContext(
        target=job.target,
        options={"schedule": job.schedule, "cluster": job.cluster, "single_rank": single_rank},
    )
    pm.run(module, ctx)
    return module, pm, ctx
