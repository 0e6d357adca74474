"""The scripts in examples/ run as a user runs them (this venv's `ckec` and `python` first on
PATH), and what they print is what the run did: ids the CLI gives too, text the tokenizer
decodes from them, report fields that agree with each other and with the plan."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import ckec

from ckeir.models.files import open_model_file
from ckeir.passes.manager import DEFAULT_PIPELINE
from ckeir.runtime.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).parent / "runtime"))  # smollm2: where the model is
from smollm2 import SPEC, gguf_path, needs_smollm2  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(Path(__file__).parent / "serve"))  # server: ckec serve in a subprocess


def run_example(*argv, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    r = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def ids_of(text: str) -> list[int]:
    return [int(i) for i in text.strip().split(",")]


def field(stdout: str, name: str) -> str:
    return next(ln for ln in stdout.splitlines() if ln.startswith(name + ":"))[len(name) + 2 :]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_gguf(open_model_file("gguf", gguf_path())) if gguf_path() else None


@needs_smollm2
def test_api_example(tmp_path, tokenizer):
    prompt = "The capital of France is"
    out = run_example(
        sys.executable, EXAMPLES / "api.py", "--prompt", prompt, "-n", "12", cwd=tmp_path
    ).stdout
    prompt_ids, new = ids_of(field(out, "prompt ids")), ids_of(field(out, "generated ids"))
    assert prompt_ids == tokenizer.encode(prompt) and len(new) == 12
    cli = ckec("run", SPEC, "--ids", ",".join(map(str, prompt_ids)), "-n", "12")
    assert cli.returncode == 0, cli.stderr
    assert new == ids_of(cli.stdout)  # the API and the CLI generate the same ids
    assert out.split("\ntext:\n", 1)[1] == prompt + tokenizer.decode(new) + "\n"
    timings = re.findall(r"^  (\S+) +([\d.]+) ms  (\d+) changes$", out, re.M)
    assert [name for name, _, _ in timings] == list(DEFAULT_PIPELINE)
    assert all(float(ms) >= 0 for _, ms, _ in timings)


@needs_smollm2
def test_main_job_example(tmp_path, tokenizer):
    r = run_example(EXAMPLES / "main_job.sh", cwd=tmp_path)
    prompt = "Once upon a time"
    cli = ckec("run", SPEC, "--ids", ",".join(map(str, tokenizer.encode(prompt))), "-n", "32")
    assert cli.returncode == 0, cli.stderr
    assert r.stdout.rstrip("\n") == prompt + tokenizer.decode(ids_of(cli.stdout))
    assert "prompt 4 tokens, generated 32" in r.stderr


def test_two_ranks_example(tmp_path):
    out = run_example(EXAMPLES / "two_ranks.sh", tmp_path / "evidence", cwd=tmp_path).stdout
    plan = json.loads((tmp_path / "evidence" / "plan.json").read_text())
    report = json.loads((tmp_path / "evidence" / "report.json").read_text())

    # the plan printed, and the run on the ranks it planned
    assert "ranks 0=n0, 1=n1" in " ".join(out.split()) and "dist.send" in out  # (wrapped)
    ranks = report["ranks"]
    assert {r: f["node"] for r, f in ranks.items()} == plan["ranks"] == {"0": "n0", "1": "n1"}

    # the ids printed are what every rank generated
    printed = next(ln for ln in out.splitlines() if re.fullmatch(r"\d+(,\d+)*", ln))
    assert ids_of(printed) == ranks["0"]["tokens"] == ranks["1"]["tokens"]
    assert len(ranks["0"]["tokens"]) == report["generated_tokens"] == 16

    # bytes one rank sent the other received, as printed
    assert ranks["0"]["bytes_sent"] == ranks["1"]["bytes_received"] > 0
    assert ranks["1"]["bytes_sent"] == ranks["0"]["bytes_received"] > 0
    for rank, f in ranks.items():
        assert (
            f"rank {rank} on {f['node']}: busy {f['busy_seconds'] * 1e3:.2f} ms, "
            f"waiting {f['waiting_seconds'] * 1e3:.2f} ms, "
            f"sent {f['bytes_sent']} B, received {f['bytes_received']} B"
        ) in out

    # decode is a two-stage pipeline: one row from n0 to n1 per decode step, of the size the
    # plan gave its dist.send
    (send,) = [t for t in plan["phases"]["decode"]["transfers"] if t["op"] == "dist.send"]
    (hop,) = [h for h in report["hops"] if (h["from"], h["to"]) == (0, 1)]
    assert (hop["messages"], hop["mean_bytes"]) == (16 - 1, send["bytes"])
    assert f"hop 0 -> 1: {hop['messages']} messages of {send['bytes']} B" in out
    assert report["decode"]["seconds_per_token"] > 0
    assert report["decode"]["predicted_seconds_per_token"] > 0


@needs_smollm2
@pytest.mark.slow
def test_serve_client_example(tmp_path, tokenizer):
    from server import Server

    import ckeir

    server = Server(SPEC, "--parallel", "2").wait_ready()
    try:
        out = run_example(
            sys.executable, EXAMPLES / "serve_client.py", "--base-url", f"{server.url}/v1",
            "-n", "24", cwd=tmp_path,
        ).stdout  # fmt: skip
        story = field(out, "story")
        again = run_example(
            sys.executable, EXAMPLES / "serve_client.py", "--base-url", f"{server.url}/v1",
            "-n", "24", cwd=tmp_path,
        ).stdout  # fmt: skip
        metrics = server.metrics()
    finally:
        assert server.stop() == 0
    assert field(out, "model") == "smollm2"
    # the streamed greedy answer is what generate gives the chat's prompt, up to <|im_end|>
    question = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.encode(tokenizer.apply_chat_template(question))
    with ckeir.compile(SPEC) as prog:
        alone = prog.generate(ids, 24)
    end = alone.index(2) if 2 in alone else len(alone)
    assert field(out, "answer") == tokenizer.decode(alone[:end])
    assert field(out, "usage") == f"prompt {len(ids)}, completion {min(end + 1, 24)}"
    # the sampled story: the same seed, the same text
    assert field(again, "story") == story
    assert metrics["ckeir_requests_total"] == 4
