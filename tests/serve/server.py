"""`ckec serve` in a subprocess, as a user starts it, and the ways a test talks to it: the
`openai` client, plain HTTP, and /metrics read back into numbers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

from cli_runner import command, start_ckec

LOAD_SECONDS = 600  # a cold compile on a loaded machine; the tests wait for "finishes"


def streamed_text(client, prompt, **options) -> str:
    """A streamed completion's text, its chunks joined."""
    stream = client.completions.create(model="smollm2", prompt=prompt, stream=True, **options)
    return "".join(c.choices[0].text for c in stream)


def streamed_together(client, prompts, **options) -> list[str]:
    """Each prompt's streamed completion, all at once (a thread each)."""
    texts: list[str | None] = [None] * len(prompts)

    def run(i):
        texts[i] = streamed_text(client, prompts[i], **options)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return texts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `ckec serve SPEC ARGS`; `health` holds every /health status seen while
    waiting for it to load."""

    def __init__(self, spec, *args, mpi: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        streams = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        argv = ("serve", spec, "--port", self.port, *args)
        if mpi is None:
            self.proc = start_ckec(*argv, **streams)
        else:  # `mpi` ranks under the venv's mpiexec (a backstop ends a stuck job)
            from needs import MPIEXEC

            line = [str(MPIEXEC), "-n", str(mpi), *command(*argv, mpi=True)]
            env = dict(os.environ, MPIEXEC_TIMEOUT="900")
            self.proc = subprocess.Popen(line, env=env, **streams)
        self.health: list[int] = []

    def request(self, path: str, body: bytes | dict | None = None) -> tuple[int, bytes]:
        """GET `path`, or POST `body` (bytes as they are, a dict as JSON): (status, body)."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=body)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self) -> Server:
        end = time.monotonic() + LOAD_SECONDS
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"ckec serve exited {self.proc.returncode}: {self.output()}")
            try:
                status, _ = self.request("/health")
            except OSError:  # not listening yet
                time.sleep(0.02)
                continue
            self.health.append(status)
            if status == 200:
                return self
            time.sleep(0.02)
        raise AssertionError("ckec serve did not become ready")

    def client(self):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="dummy", max_retries=0)

    def metrics(self) -> dict[str, float]:
        """/metrics as name{labels} -> value."""
        text = self.request("/metrics")[1].decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def output(self) -> str:
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            return "(still running)"
        return out + err

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode
