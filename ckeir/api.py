"""The Python front door: `ckeir.compile(spec)` → `Program`; `Program.generate(ids, n)`."""

from __future__ import annotations

import contextlib
import time

import numpy as np

from ckeir import driver
from ckeir.backends.llvm.host import detect_host, usable_cpus
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.lower import lower_module_cached
from ckeir.backends.llvm.width import adaptive_wanted
from ckeir.backends.reference import ReferenceEngine
from ckeir.errors import CkeError
from ckeir.ir.printer import print_ir
from ckeir.outputs import check_output_dir, write_output
from ckeir.ranks import run_local
from ckeir.runtime import linux
from ckeir.runtime.batching import (
    OneSequenceSlots,
    Scheduler,
    check_batched_request,
    check_prompts,
)
from ckeir.runtime.generate import GenerationStats, check_request, generate_stream
from ckeir.runtime.memory import Region, huge_pages_wanted
from ckeir.runtime.sampling import Sampler, Sampling
from ckeir.runtime.tokenizer import TextStream, check_stop
from ckeir.runtime.weights import dequantize_rows, file_weights, pack, random_weights


def load_weights(job: driver.Job, formats: dict[str, str], huge_pages: bool | None = None):
    """The model's weights in the formats the quantize pass chose (GGML blocks as uint8); a
    file's tensors on huge pages unless `huge_pages` is False (see `file_weights`)."""
    w = job.model.weights
    if w.kind == "random":
        return pack(random_weights(job.config, w.seed), formats)
    return file_weights(job.config, job.model_file, formats, huge_pages)


class Program:
    """A compiled spec: the IR after the passes, the native code, and a ready engine."""

    def __init__(
        self,
        spec_path,
        *,
        backend: str = "llvm",
        threads: int | None = None,
        isa: str | None = None,
        pipeline: str | None = None,
        verify_each: bool = True,
        print_after_all: bool = False,
        print_after=(),
        dump_dir=None,
        schedule: str | None = None,
        printer=print,
        on_stage=None,
        rank: int | None = None,
        transport=None,
        launcher: bool = False,
        single_rank: bool = False,
        huge_pages: bool | None = None,
        pin: bool | None = None,
        adaptive_threads: bool | None = None,
    ):
        self.timings: dict[str, float] = {}
        self._stage = on_stage or (lambda name: None)
        # an unwritable dump directory is refused before any work, not after it
        self.dump_dir = check_output_dir(dump_dir, "--dump-dir") if dump_dir else None
        self._stage("reading the spec and the model file")
        t0 = time.perf_counter()
        self.job = driver.resolve(spec_path, schedule)
        self.config = self.job.config
        self.module = driver.build_ir(self.job)
        self.timings["frontend"] = time.perf_counter() - t0
        self._stage("running passes")
        self.module, self.pass_manager, self.ctx = driver.run_passes(
            self.module,
            self.job,
            pipeline,
            single_rank=single_rank,
            verify_each=verify_each,
            print_after_all=print_after_all,
            print_after=frozenset(print_after),
            dump_dir=self.dump_dir,
            printer=printer,
        )
        self.timings["passes"] = sum(t.seconds for t in self.pass_manager.timings)
        self.backend = backend
        self.placement = self.ctx.artifacts.get("placement", {})
        self.rank_nodes = self.ctx.artifacts.get("ranks") or {0: self.job.cluster.nodes[0].name}
        self.world_size = len(self.rank_nodes)
        self.transport = transport
        self.rank = transport.rank if transport is not None else rank
        node = self.job.cluster.node(self.rank_nodes[self.rank or 0])
        # the node's cores, but never more threads than this process may run on, nor more
        # than its share when ranks of the job share the machine (local ranks are given
        # their share; MPI ranks on one machine divide its CPUs)
        here = transport.ranks_here if transport is not None else 1
        self.threads = threads or max(1, min(node.cores, usable_cpus() // here))
        self.host = detect_host(isa)
        # weights and arenas on huge pages; None: the environment decides (CKEIR_HUGE_PAGES)
        self.huge_pages = huge_pages_wanted(huge_pages)
        # pool threads on CPUs of their own while generating; None: as the schedule says
        # (`threads pinned|unpinned`), else linux.PIN_DEFAULT — the choice `ckec run` makes
        self.pin = pin
        # whether each run takes as many pool threads as measured fastest (width.WidthPolicy)
        # or all of them; None: the environment decides (CKEIR_ADAPTIVE_THREADS)
        self.adaptive_threads = adaptive_wanted(adaptive_threads)
        self._pinned_cpus: list[int] | None = None
        self._pinning = 0  # depth of `pinned_threads` blocks (only the outermost pins)
        self._options = dict(
            backend=backend,
            threads=threads,
            isa=isa,
            pipeline=pipeline,
            verify_each=verify_each,
            schedule=schedule,
            huge_pages=self.huge_pages,
            adaptive_threads=self.adaptive_threads,
        )
        self.spec_path = spec_path
        self._weights = None
        self._engine = None
        self._slots = None  # generate_many's sequence slots (batching.OneSequenceSlots)
        self.lowered = self.compiled = None
        self.cache_hits: dict[str, bool] = {}
        # A launcher of local ranks compiles nothing itself: every rank compiles its programs.
        native = backend == "llvm" and not (launcher and self.world_size > 1 and transport is None)
        if native:
            self._stage("lowering to LLVM IR")
            t0 = time.perf_counter()
            self.lowered, hit = lower_module_cached(self.module, self.host, rank=self.rank)
            self.cache_hits = {"lowering": hit}
            self.timings["lower-llvm"] = time.perf_counter() - t0
            self._stage(f"compiling native code for {self.host.name}")
            self.compiled = compile_ir(self.lowered.text, self.host)
            self.cache_hits["object code"] = self.compiled.cache_hit
            for k, v in self.compiled.timings.items():
                self.timings[f"llvm-{k}"] = v
            if self.dump_dir is not None:
                n = len(self.pass_manager.timings) + 1
                write_output(self.dump_dir / f"{n:02d}-lower-llvm.ll", self.lowered.text)
                write_output(self.dump_dir / f"{n + 1:02d}-codegen.s", self.compiled.asm())
        elif backend not in ("reference", "llvm"):
            raise CkeError(f"unknown backend '{backend}' (choose llvm or reference)")

    # -- products ----------------------------------------------------------------------------
    def mlir(self) -> str:
        return print_ir(self.module)

    def llvm_ir(self) -> str:
        return self.lowered.text

    def asm(self) -> str:
        return self.compiled.asm()

    @property
    def weights(self) -> dict[str, np.ndarray]:
        if self._weights is None:
            self._stage("loading weights")
            t0 = time.perf_counter()
            # the numpy reference computes on its own f32 copies: nothing to place
            huge = self.huge_pages and self.backend == "llvm"
            self._weights = load_weights(self.job, self.weight_formats, huge)
            self.timings["weights"] = time.perf_counter() - t0
        return self._weights

    @property
    def weight_placement(self) -> dict | None:
        """Where the model file's tensors live (`copy` onto huge pages or `map`), and why:
        None for random weights.  Loads the weights if needed."""
        placement = getattr(self.weights, "placement", None)
        return None if placement is None else placement.as_dict()

    @property
    def tokenizer(self):
        """The model file's tokenizer (None for random-weight models)."""
        if getattr(self, "_tokenizer", None) is None and self.job.model_file is not None:
            if self.job.model.weights.kind == "gguf":
                from ckeir.runtime.tokenizer import Tokenizer

                self._tokenizer = Tokenizer.from_gguf(self.job.model_file)
        return getattr(self, "_tokenizer", None)

    @property
    def weight_formats(self) -> dict[str, str]:
        """Weight name -> storage format, as the quantize pass chose (f32 without it)."""
        return dict(self.ctx.stats.get("quantize", {}))

    @property
    def engine(self):
        if self._engine is None:
            if self.world_size > 1 and self.transport is None:
                raise CkeError(
                    f"this schedule runs on {self.world_size} ranks: generate() launches "
                    "them (local ranks), or give each rank its transport"
                )
            weights = self.weights  # loaded (and timed) on its own
            t0 = time.perf_counter()
            self._engine = self._make_engine(weights)
            # buffers, and the copy of the weights onto huge pages as the programs take them
            self.timings["engine"] = time.perf_counter() - t0
        return self._engine

    def _make_engine(self, weights, pool=None):
        c = self.config
        cache = (c.layers, c.context, c.kv_dim)
        if self.world_size > 1:
            from ckeir.runtime.distributed import RankEngine

            return RankEngine(
                self.rank,
                self.lowered,
                self.compiled,
                weights,
                self.placement,
                c,
                self.threads,
                self.host,
                self.transport,
                huge_pages=self.huge_pages,
                adaptive=self.adaptive_threads,
            )
        if self.backend == "llvm":
            from ckeir.backends.llvm.engine import NativeEngine

            return NativeEngine(
                self.lowered,
                self.compiled,
                weights,
                cache,
                self.threads,
                self.host,
                self.huge_pages,
                adaptive=self.adaptive_threads,
                pool=pool,
            )
        fmts = self.weight_formats
        plain = {k: dequantize_rows(v, fmts.get(k, "f32")) for k, v in weights.items()}
        return ReferenceEngine(self.module, plain, cache)

    # -- running -----------------------------------------------------------------------------
    def check_request(self, ids, max_new_tokens: int) -> list[int]:
        """The prompt `ids` as a list of this model's token ids, refused before any work (no
        weights loaded, no rank started): see `generate.check_request`."""
        return check_request(ids, max_new_tokens, self.config.vocab, self.config.context)

    def wants_pinning(self, pin: bool | None = None) -> bool:
        """Whether a run pins the pool threads: `pin` if given, else the Program's `pin`,
        else the schedule's `threads pinned|unpinned`, else `linux.PIN_DEFAULT`."""
        asked = pin if pin is not None else self.pin
        return linux.wants_pinning(asked, getattr(self.job.schedule, "pin", None))

    @contextlib.contextmanager
    def pinned_threads(self, pin: bool | None = None):
        """Inside the block, each of the engine's pool threads runs only on a CPU of its own
        when the run pins them (`wants_pinning`; ranks of one machine on different CPUs,
        `linux.pin_plan`), and gets its mask back after.  Yields the CPU of each thread, or
        None when they are left to the OS.  A block inside another changes nothing: the
        outer one's choice holds (a rank pins around the whole run, `stream` inside it)."""
        if self._pinning:
            self._pinning += 1
            try:
                yield self._pinned_cpus
            finally:
                self._pinning -= 1
            return
        pool = getattr(self.engine, "pool", None)  # the reference engine has no threads
        threads = pool.thread_ids() if pool is not None else {}
        cpus = None
        if threads and self.wants_pinning(pin):
            cpus = linux.pin_plan(len(threads), self.rank or 0)
        self._pinning, self._pinned_cpus = 1, cpus
        try:
            with linux.pinned(threads, cpus):
                yield cpus
        finally:
            self._pinning, self._pinned_cpus = 0, None

    def sampler(self, **sampling) -> Sampler | None:
        """A sampler of these options (`sampling.Sampling`: temperature, top_k, top_p, min_p,
        seed, repeat_penalty, repeat_last_n, presence_penalty, frequency_penalty), checked
        before any work; None when they choose greedily (the engine's argmax).  Over several
        ranks, the root rank (the last stage's first) draws and every rank follows."""
        return Sampling.of(**sampling).pick()

    def stream(
        self,
        ids,
        max_new_tokens: int = 16,
        stats: GenerationStats | None = None,
        on_logits=None,
        *,
        pin: bool | None = None,
        **sampling,
    ):
        """Yield token ids as they are generated: greedy, or sampled as `sampling` says
        (see `sampler`); `stop=[text, ...]` ends the stream with the id whose text reaches
        one of the strings (see `text_stream`).  `pin`: the pool threads on CPUs of their
        own while generating (None: the Program's choice, see `wants_pinning`).  One rank of
        a world ends at a stop string where every rank does: each sees the same ids."""
        ids = self.check_request(ids, max_new_tokens)
        options = dict(sampling)
        text = self.text_stream(options.pop("stop", None))
        sampler = self.sampler(**options)
        engine = self.engine
        tokens = generate_stream(
            engine, ids, max_new_tokens, self.config.vocab, stats, on_logits, sampler
        )
        return self._pinned_stream(tokens, pin, text)

    def _pinned_stream(self, tokens, pin: bool | None, text=None):
        with self.pinned_threads(pin):
            for token in tokens:
                yield token
                if text is not None:
                    text.push(token)
                if text is not None and text.stopped:
                    tokens.close()  # the generation ends here (stats count what was made)
                    return

    def text_stream(self, stop=None) -> TextStream | None:
        """Generated ids to text for stop strings (`tokenizer.TextStream`); None without
        any.  Stop strings are text: the model file must carry a tokenizer."""
        stop = check_stop(stop)
        if not stop:
            return None
        if self.tokenizer is None:
            raise CkeError("stop strings are text, and this model's file has no tokenizer")
        return TextStream(self.tokenizer, stop)

    def cut_at_stop(self, ids: list[int], stop=None) -> list[int]:
        """`ids` up to the one whose text reaches a stop string (all of them if none does)."""
        text = self.text_stream(stop)
        if text is None:
            return ids
        for n, token in enumerate(ids, 1):
            text.push(token)
            if text.stopped:
                return ids[:n]
        return ids

    def generate(
        self, ids, max_new_tokens: int = 16, *, pin: bool | None = None, **sampling
    ) -> list[int]:
        """The continuation of `ids` (a list of token ids): the new token ids, greedy unless
        `sampling` says otherwise (temperature, top_k, top_p, min_p, seed, penalties: see
        `sampler`; the same seed gives the same ids; `stop`: as for `stream`).  A schedule
        over several nodes runs
        here as local ranks (one process each), unless this Program is already one rank of
        a running world.  `pin`: as for `stream`."""
        if self.world_size > 1 and self.transport is None:
            ids = self.check_request(ids, max_new_tokens)
            self.text_stream(sampling.get("stop"))  # checked before any rank starts
            self.sampler(**{k: v for k, v in sampling.items() if k != "stop"})
            return run_local(self, ids, max_new_tokens, pin=pin, sampling=sampling)["tokens"]
        return list(self.stream(ids, max_new_tokens, pin=pin, **sampling))

    def memory_regions(self) -> list[Region]:
        """The memory this process's engine computes in, as (name, address, length) regions
        named `weights`, `arena` and `kv_cache`: `ckeir.runtime.memory.huge_pages_report`
        tells how much of each is on huge pages.  Builds the engine if needed."""
        # the reference engine computes in numpy arrays of its own: none to report
        return getattr(self.engine, "memory_regions", list)()

    def slot_engine(self, slots: int | None = None):
        """`slots` sequence slots over this Program's compiled code (`batching.SlotEngine`;
        default: the schedule's `batch`), kept until another count is asked for or the
        Program closes.  At the schedule's `batch N` (N > 1), one engine over the batched
        decode program (a step's rows in one call); otherwise slot 0 is the Program's engine,
        every other an engine of its own KV cache sharing the weights, the code and (native)
        the thread pool.  One process only: a schedule over several ranks has no slot
        engine yet."""
        if self.world_size > 1:
            raise CkeError(
                f"this schedule runs on {self.world_size} ranks: generate_many runs one rank's "
                "programs for now (call generate for each prompt)"
            )
        slots = self.job.schedule.batch if slots is None else slots
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise CkeError(f"slots must be a positive number of sequences, not {slots!r}")
        if self._slots is None or self._slots.slots != slots:
            self.close_slots()
            if slots == self.job.schedule.batch > 1:
                self._slots = self._batched_slots()
            else:
                first = self.engine
                pool = getattr(first, "pool", None)
                more = [self._make_engine(self.weights, pool) for _ in range(slots - 1)]
                self._slots = OneSequenceSlots([first, *more], self.config.vocab)
        return self._slots

    def _batched_slots(self):
        """The schedule's `batch N` as N slots of one engine: the batched decode program
        runs every row of a step in one call, each weight read once for all of them."""
        if self.backend == "llvm":
            from ckeir.backends.llvm.engine import NativeSlots

            return NativeSlots(
                self.lowered,
                self.compiled,
                self.weights,
                self.threads,
                self.host,
                self.huge_pages,
                adaptive=self.adaptive_threads,
                pool=self.engine.pool,
            )
        from ckeir.backends.reference import ReferenceSlots

        fmts = self.weight_formats
        plain = {k: dequantize_rows(v, fmts.get(k, "f32")) for k, v in self.weights.items()}
        return ReferenceSlots(self.module, plain)

    def generate_many(
        self,
        prompts,
        max_new_tokens: int = 16,
        *,
        slots: int | None = None,
        report: bool = False,
        **sampling,
    ):
        """Continuations of several prompts through the continuous-batching scheduler
        (`runtime.batching`): one id list per prompt, each what `generate` gives that prompt
        alone with the same `sampling` options (each prompt samples with a random state of
        its own, seeded by `seed` if given; a continuation that would pass the context stops
        there).  More prompts than `slots` wait for a free slot.  Every prompt is checked
        before any runs; an error names the prompt.  `stop`: as for `stream`, each
        sequence ending at its own stop string.

        A `batch N` schedule over pipeline stages runs here on local ranks (rank 0 schedules
        over `PipelineSlots` and draws each sequence's ids).  `report`: also return the run's report
        (`reports.run.many_report`), as (ids, report)."""
        stop = sampling.pop("stop", None)
        self.text_stream(stop)  # checked before any work
        options = Sampling.of(**sampling)
        c = self.config
        prompts = check_prompts(  # refused before any rank starts
            prompts, lambda ids: check_batched_request(ids, max_new_tokens, c.vocab, c.context)
        )
        if report or (self.world_size > 1 and self.transport is None):
            out = self._many_on_ranks(prompts, max_new_tokens, sampling, report)
            ids = out[0] if report else out
            ids = [self.cut_at_stop(t, stop) for t in ids]
            return (ids, out[1]) if report else ids
        engine = self.slot_engine(slots)
        with Scheduler(engine) as scheduler:
            seqs = []
            for ids in prompts:
                stopper = _Stopper(self.text_stream(stop))
                seq = scheduler.submit(
                    ids, max_new_tokens, pick=options.pick(), on_token=stopper.on_token
                )
                stopper.seq = seq
                seqs.append(seq)
            scheduler.run()
            return [seq.result() for seq in seqs]

    def _many_on_ranks(self, prompts, max_new_tokens: int, sampling: dict, report: bool):
        """generate_many through `ranks.run_many` (one rank) or `ranks.run_local_many`
        (a batched pipeline's local ranks), with the figures its report reads."""
        from ckeir.ranks import run_local_many, run_many
        from ckeir.reports.run import many_report

        if self.world_size > 1 and self.job.schedule.batch < 2:
            raise CkeError(
                f"this schedule runs on {self.world_size} ranks: generate_many runs several "
                "ranks as a batched pipeline (`batch N`, N > 1, over stages of one node each); "
                "call generate for each prompt"
            )
        if self.world_size > 1 and self.transport is None:
            out = run_local_many(self, prompts, max_new_tokens, sampling=sampling)
            figures = out["ranks"]
        else:
            out = run_many(self, prompts, max_new_tokens, sampling=sampling)  # its slot engine
            figures = [out]
        ids = out["tokens"]
        return (ids, many_report(self, figures)) if report else ids

    def close_slots(self) -> None:
        """Close generate_many's slot engines (the Program's own engine stays)."""
        if self._slots is None:
            return
        engines = getattr(self._slots, "engines", None)
        if engines is None:  # one batched engine (sharing the Program's pool, if any)
            self._slots.close()
        else:
            for engine in engines[1:]:
                engine.close()
        self._slots = None

    def close(self) -> None:
        self.close_slots()
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Stopper:
    """A scheduler sequence's `on_token` that ends it (cancelled, its ids kept) once its
    text reaches a stop string."""

    def __init__(self, text: TextStream | None):
        self.text, self.seq = text, None

    def on_token(self, token: int) -> None:
        if self.text is not None:
            self.text.push(token)
            if self.text.stopped and self.seq is not None:
                self.seq.cancel()


def compile(spec_path, **options) -> Program:  # noqa: A001
    """Compile a `.cke` spec (see `Program` for options: backend, threads, isa, pipeline...)."""
    return Program(spec_path, **options)
