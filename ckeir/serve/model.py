"""The model `ckec serve` serves: a compiled spec, its slot engine and the continuous-batching
scheduler stepping it on a background thread; and `Generation`, one request seen from the
event loop (text pieces as they become final, then how it ended).

Loading (compiling, reading the weights, building the engines) takes seconds: it runs on a
thread of its own while the server already answers (`/health` says 503 until it is done).
"""

from __future__ import annotations

import asyncio
import threading
import time

from ckeir.errors import CkeError
from ckeir.runtime.batching import Scheduler, check_batched_request
from ckeir.runtime.sampling import Sampling
from ckeir.runtime.tokenizer import TextStream


class ServedModel:
    """Loads a spec on a thread (`start_loading`), then serves its requests through one
    `Scheduler` over `parallel` sequence slots."""

    def __init__(self, spec, *, parallel: int | None = None, transport=None, **program_options):
        self.spec = spec
        self.parallel = parallel
        self.transport = transport  # rank 0's, when the schedule runs on several ranks
        self._pipeline = None
        self.program_options = program_options
        self.prog = None
        self.scheduler: Scheduler | None = None
        self.tokenizer = None
        self.name = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.created = int(time.time())
        self.loaded_at: float | None = None
        self._thread: threading.Thread | None = None

    def start_loading(self, on_failure=None) -> None:
        def load():
            try:
                self.load()
            except BaseException as e:  # noqa: BLE001 - reported by /health and the CLI
                self.error = e
                if on_failure is not None:
                    on_failure(e)

        self._thread = threading.Thread(target=load, name="ckeir-serve-load", daemon=True)
        self._thread.start()

    def load(self) -> None:
        from ckeir.api import Program

        prog = Program(self.spec, transport=self.transport, **self.program_options)
        try:
            self.name = prog.job.model.name
            self.tokenizer = prog.tokenizer
            engine = self._pipeline_slots(prog) if prog.world_size > 1 else self._slots(prog)
            self.scheduler = Scheduler(engine).start()
        except BaseException:
            prog.close()
            raise
        self.prog = prog
        self.loaded_at = time.time()
        self.ready.set()

    def _slots(self, prog):
        engine = prog.slot_engine(self.parallel)
        _ = prog.engine  # weights, buffers and threads before the first request
        return engine

    def _pipeline_slots(self, prog):
        """Rank 0's slots over a batched pipeline: every step goes down the stages, the
        other ranks serving it (`pipeline_slots.serve_steps`)."""
        from ckeir.planner.bubbles import chosen_depth
        from ckeir.runtime.pipeline_slots import PipelineSlots

        check_ranks_servable(prog, self.parallel)
        self._pipeline = PipelineSlots(prog.engine, self.transport, chosen_depth(prog))
        return self._pipeline

    @property
    def context(self) -> int:
        return self.scheduler.engine.context

    @property
    def vocab(self) -> int:
        return self.scheduler.engine.vocab

    def needs_tokenizer(self, what: str):
        if self.tokenizer is None:
            raise CkeError(f"{what} needs text, and this model's file has no tokenizer")
        return self.tokenizer

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop(timeout=10)
        try:
            if self._pipeline is not None:
                self._pipeline.close()  # the other ranks' loops end
        finally:
            if self.prog is not None:
                self.prog.close()


class Generation:
    """One request on the scheduler, read from the event loop: `pieces()` yields the text
    as it becomes final (EOS ids and stop strings left out); then `finish_reason` ("stop"
    or "length") and `completion_tokens` say how it ended.  Leaving `pieces()` early (a
    client that hung up) cancels the sequence, which frees its slot at the next step."""

    def __init__(self, model: ServedModel, ids: list[int], max_tokens, sampling: Sampling, stop):
        self.model = model
        self.ids = ids
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        tk = model.tokenizer
        self.text = TextStream(tk, stop) if tk is not None else None
        self.eos = tk.eos_ids if tk is not None else frozenset()
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        if max_tokens is None:
            max_tokens = max(model.context - len(ids), 1)
        self.seq = model.scheduler.submit(
            ids,
            max_tokens,
            eos=self.eos,
            on_token=self._token,
            on_done=self._done,
            pick=sampling.pick(),
        )

    def _token(self, token: int) -> None:  # the scheduler's thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, token)

    def _done(self, seq) -> None:  # the scheduler's thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    async def pieces(self):
        try:
            while True:
                token = await self.queue.get()
                if token is None:
                    break
                self.completion_tokens += 1
                if token in self.eos or self.text is None:
                    continue
                piece = self.text.push(token)
                if piece:
                    yield piece
                if self.text.stopped is not None:
                    self.finish_reason = "stop"
                    return
            if self.seq.error is not None:
                raise self.seq.error
            if self.text is not None:
                piece = self.text.finish()
                if piece:
                    yield piece
            self.finish_reason = "stop" if self.seq.finish_reason == "stop" else "length"
        finally:
            if not self.seq.done:
                self.seq.cancel()


def check_ranks_servable(prog, parallel: int | None) -> None:
    """A schedule on several ranks serves through its pipeline's batched slots: its own
    `batch N` (N > 1), which --parallel may only repeat."""
    batch = prog.job.schedule.batch
    if batch < 2:
        raise CkeError(
            f"this schedule runs on {prog.world_size} ranks with batch 1: ckec serve runs a "
            "pipeline's batched slots there (give the schedule `batch N`, N > 1)"
        )
    if parallel not in (None, batch):
        raise CkeError(
            f"--parallel {parallel}: a schedule on several ranks serves its own batch of "
            f"{batch} slots (leave --parallel out, or change `batch`)"
        )


def check_prompt(model: ServedModel, ids: list[int], max_tokens) -> list[int]:
    """The prompt's ids as the scheduler would take them, refused here (a 400) rather than
    failing its sequence."""
    n = 1 if max_tokens is None else max_tokens
    return check_batched_request(ids, n, model.vocab, model.context)
