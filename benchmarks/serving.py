"""Serving: 1, 4 and 8 concurrent clients streaming completions from `ckec serve`, and from
llama-cpp-python's own OpenAI server on the same GGUF and threads.

Each server runs in a child process; each client (a thread with the `openai` package) sends
`--requests` streamed completions one after another (greedy, `--tokens` new tokens at most,
prompts of a few sentences that differ per client).  Per run:

- aggregate tok/s: completion tokens of every request / wall time of the whole run;
- TTFT: from sending a request to its first text chunk (p50 over requests);
- ITL: time between consecutive text chunks of one request (p50 / p99 over all).

ckeir serves with `--parallel` slots on a `batch N` spec (one batched engine: a step reads
the weights once for every running sequence); llama-cpp-python's server (`python -m
llama_cpp.server`) takes one request at a time (`--interrupt_requests False`: its default
lets a new request end the running one).  Its server needs extras that
llama-cpp-python's own package does not install (fastapi, starlette-context,
pydantic-settings, ...): install them with `pip install --no-deps`; the table says when it
cannot start.

    python -m benchmarks.serving [--spec specs/smollm2-batch8.cke] [--clients 1,4,8]
                                 [--tokens 64] [--requests 2] [--threads 2] [--no-llama]
                                 [--json FILE]
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REPO,
    common_args,
    fmt,
    host_line,
    log,
    print_table,
    smollm2_gguf,
    write_json,
)

DEFAULT_SPEC = REPO / "specs" / "smollm2-batch8.cke"
SUBJECTS = [
    "the history of the printing press",
    "how bees make honey",
    "why the sky is blue",
    "the rules of chess",
    "how a steam engine works",
    "the life of a star",
    "how to bake bread",
    "the water cycle",
]


def prompt(client: int, request: int) -> str:
    subject = SUBJECTS[(client + request) % len(SUBJECTS)]
    return f"Here is a short essay about {subject}, written for a curious reader.\n\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], port: int, name: str, timeout: float = 900) -> subprocess.Popen:
    """A server process, once its /v1/models answers; raises if it exits first.  Its
    output goes to a file (llama.cpp logs more than a pipe holds)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log_file = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=env)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            log_file.seek(0)
            raise RuntimeError(f"{name} exited {proc.returncode}: {log_file.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{name} did not start in {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def one_request(client, model: str, text: str, tokens: int) -> dict:
    t0 = time.perf_counter()
    arrivals, count = [], 0
    stream = client.completions.create(
        model=model, prompt=text, max_tokens=tokens, temperature=0, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.perf_counter())
            count += 1
    return {"sent": t0, "arrivals": arrivals, "chunks": count}


def run_clients(url: str, model: str, clients: int, requests: int, tokens: int) -> dict:
    import openai

    results: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client_main(c: int) -> None:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="dummy", max_retries=0) as client:
            for r in range(requests):
                try:
                    out = one_request(client, model, prompt(c, r), tokens)
                except Exception as e:  # noqa: BLE001 - counted and shown
                    with lock:
                        errors.append(e)
                    return
                with lock:
                    results.append(out)

    threads = [threading.Thread(target=client_main, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]!r}")
    ttft = [r["arrivals"][0] - r["sent"] for r in results if r["arrivals"]]
    gaps = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)]
    total = sum(r["chunks"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": total,
        "seconds": wall,
        "tok_s": total / wall,
        "ttft_p50_ms": 1e3 * statistics.median(ttft) if ttft else None,
        "itl_p50_ms": 1e3 * statistics.median(gaps) if gaps else None,
        "itl_p99_ms": 1e3 * percentile(gaps, 99) if gaps else None,
    }


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def measure(name, argv, port, model, args) -> list[dict]:
    log(f"starting {name}")
    proc = start(argv, port, name)
    url = f"http://127.0.0.1:{port}"
    try:
        run_clients(url, model, 1, 1, 8)  # warm-up: first-call costs out of the table
        rows = []
        for c in args.clients:
            log(f"{name}: {c} client(s)")
            rows.append({"server": name, **run_clients(url, model, c, args.requests, args.tokens)})
        return rows
    finally:
        stop(proc)


def main() -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--clients", default="1,4,8")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--requests", type=int, default=2, help="requests per client, in turn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=8, help="ckec serve's slots")
    p.add_argument("--no-llama", action="store_true")
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    port = free_port()
    rows = []
    ckec = [sys.executable, "-m", "ckeir.cli", "serve", str(args.spec), "--port", str(port)]
    ckec += ["--parallel", str(args.parallel), "--threads", str(args.threads)]
    rows += measure("ckec serve", ckec, port, "smollm2", args)
    notes = []
    gguf = smollm2_gguf()
    if not args.no_llama and gguf is not None:
        port = free_port()
        llama = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
        llama += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
        llama += ["--n_ctx", "2048", "--port", str(port), "--model_alias", "smollm2"]
        # its default lets a new request cut the running one short: queue them instead
        llama += ["--interrupt_requests", "False"]
        try:
            rows += measure("llama_cpp.server", llama, port, "smollm2", args)
        except RuntimeError as e:
            notes.append(f"llama_cpp.server: {str(e)[:300]}")
    columns = ["server", "clients", "requests", "tokens", "tok/s", "TTFT p50 ms"]
    columns += ["ITL p50 ms", "ITL p99 ms"]
    table = [
        [
            r["server"],
            r["clients"],
            r["requests"],
            r["tokens"],
            fmt(r["tok_s"]),
            fmt(r["ttft_p50_ms"]),
            fmt(r["itl_p50_ms"]),
            fmt(r["itl_p99_ms"]),
        ]
        for r in rows
    ]
    notes.insert(0, host_line())
    notes.append(
        f"{args.requests} streamed completions per client in turn, greedy, at most "
        f"{args.tokens} tokens; ckec serve {args.spec.name} --parallel {args.parallel}; "
        f"{args.threads} threads each"
    )
    print_table("Serving: concurrent streaming clients", columns, table, notes)
    if args.json:
        write_json(args.json, "serving", rows, args={**vars(args), "spec": str(args.spec)})


if __name__ == "__main__":
    main()
