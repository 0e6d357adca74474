"""`ckec serve` on SmolLM2, talked to through the `openai` package as any client would: the
greedy text is `generate`'s, chat plain = chat streamed, concurrent streams each give what
they give alone (and share steps), seeds repeat draws, bad requests get OpenAI's error shape
and the server keeps serving, a client that hangs up frees its slot.  One server for the
module (started once, 4 slots)."""

from __future__ import annotations

import json
import time

import pytest
from server import Server, streamed_text, streamed_together
from smollm2 import SPEC, needs_smollm2

import ckeir

pytestmark = [needs_smollm2, pytest.mark.slow]

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
]
CHAT = [{"role": "user", "content": "Name a fruit that is yellow."}]


@pytest.fixture(scope="module")
def server():
    s = Server(SPEC, "--parallel", "4").wait_ready()
    yield s
    assert s.stop() == 0, s.output()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def prog():
    with ckeir.compile(SPEC) as p:
        yield p


def test_health_said_503_while_loading(server):
    assert server.health[0] == 503 and server.health[-1] == 200
    status, body = server.request("/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}


def test_models_lists_the_spec_model(client):
    (model,) = client.models.list().data
    assert model.id == "smollm2" and model.object == "model"


def test_greedy_completion_is_generate(client, prog):
    tk = prog.tokenizer
    for prompt in PROMPTS[:2]:
        ids = tk.encode(prompt)
        r = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0)
        assert r.choices[0].text == tk.decode(prog.generate(ids, 12))
        assert r.choices[0].finish_reason == "length"
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 12)
        assert r.usage.total_tokens == len(ids) + 12
    # token ids as the prompt: the same continuation
    ids = tk.encode(PROMPTS[0])
    r = client.completions.create(model="smollm2", prompt=ids, max_tokens=12, temperature=0)
    assert r.choices[0].text == tk.decode(prog.generate(ids, 12))


def test_chat_plain_is_chatstreamed_text(client, prog):
    tk = prog.tokenizer
    plain = client.chat.completions.create(
        model="smollm2", messages=CHAT, max_tokens=40, temperature=0
    )
    ids = tk.encode(tk.apply_chat_template(CHAT))
    alone = prog.generate(ids, 40)
    eos = alone.index(2) if 2 in alone else None  # <|im_end|> ends the answer
    assert plain.choices[0].message.content == tk.decode(alone[:eos])
    assert plain.choices[0].finish_reason == ("stop" if eos is not None else "length")
    assert plain.usage.prompt_tokens == len(ids)

    chunks = list(
        client.chat.completions.create(
            model="smollm2",
            messages=CHAT,
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == plain.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_concurrent_streams_each_give_what_they_give_alone(server, client):
    options = dict(max_tokens=24, temperature=0)
    alone = [
        client.completions.create(model="smollm2", prompt=p, **options).choices[0].text
        for p in PROMPTS
    ]
    before = server.metrics()
    together = streamed_together(client, PROMPTS, **options)
    assert together == alone
    after = server.metrics()
    steps = after["ckeir_steps_total"] - before["ckeir_steps_total"]
    rows = after["ckeir_step_tokens_total"] - before["ckeir_step_tokens_total"]
    generated = after["ckeir_generated_tokens_total"] - before["ckeir_generated_tokens_total"]
    assert generated == 4 * 24
    assert steps < generated  # sequences shared steps: they ran together, not in turn
    assert rows > steps


def test_same_seed_same_text_other_seed_other_text(client):
    def draw(seed):
        return streamed_text(client, PROMPTS[1], max_tokens=24, temperature=1.0, seed=seed)

    first = draw(7)
    assert draw(7) == first
    plain = client.completions.create(
        model="smollm2", prompt=PROMPTS[1], max_tokens=24, temperature=1.0, seed=7
    )
    assert plain.choices[0].text == first
    assert len({first, draw(8), draw(9)}) > 1


def test_stop_strings_are_left_out(client):
    greedy = client.completions.create(
        model="smollm2", prompt=PROMPTS[1], max_tokens=24, temperature=0
    ).choices[0]
    stop = greedy.text[8:12]
    r = client.completions.create(
        model="smollm2", prompt=PROMPTS[1], max_tokens=24, temperature=0, stop=[stop]
    )
    assert r.choices[0].text == greedy.text[: greedy.text.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = streamed_text(client, PROMPTS[1], max_tokens=24, temperature=0, stop=stop)
    assert streamed == r.choices[0].text


BAD = [
    (b"{not json", "not valid JSON", None),
    ({"prompt": "hi", "max_tokens": -5}, "max_tokens must be an integer", "max_tokens"),
    ({"prompt": "hi", "temperature": "hot"}, "temperature is a number", "temperature"),
    ({"prompt": "hi", "stream": "yes"}, "stream must be true or false", "stream"),
    ({"prompt": "hi " * 9000, "max_tokens": 4}, "exceed the model's context", "prompt"),
    ({"max_tokens": 4}, "'prompt' is required", "prompt"),
]


@pytest.mark.parametrize("body, words, param", BAD)
def test_bad_completion_requests_get_openai_errors(server, body, words, param):
    status, raw = server.request("/v1/completions", body)
    error = json.loads(raw)["error"]
    assert status == 400 and error["type"] == "invalid_request_error"
    assert words in error["message"] and error["param"] == param
    status, raw = server.request("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 2


def test_chat_without_messages(server):
    status, raw = server.request("/v1/chat/completions", {"max_tokens": 4})
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == "messages" and "required" in error["message"]


def test_bad_chat_requests_through_the_client(client):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2", messages=[], max_tokens=4)
    assert e.value.status_code == 400 and "messages" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2", messages="hello", max_tokens=4)
    r = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=3)
    assert r.usage.completion_tokens <= 3


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_frees_its_slot(server, client, stream):
    import openai

    before = server.metrics()
    options = dict(model="smollm2", prompt=PROMPTS[2], max_tokens=4000, temperature=0)
    if stream:
        chunks = client.completions.create(stream=True, **options)
        for i, _ in enumerate(chunks):
            if i == 3:
                break
        chunks.close()  # the connection goes; the sequence should too
    else:
        with pytest.raises(openai.APITimeoutError):  # the client gives up waiting
            client.with_options(timeout=1.0).completions.create(**options)
    cancelled = 'ckeir_requests_finished_total{reason="cancelled"}'
    for _ in range(6000):  # polls until the server has seen it (bounded: it must finish)
        m = server.metrics()
        if m[cancelled] > before[cancelled]:
            break
        time.sleep(0.02)
    # counted cancelled as its slot is freed: the same read shows the slot free
    assert m[cancelled] == before[cancelled] + 1 and m["ckeir_busy_slots"] == 0
    generated = m["ckeir_generated_tokens_total"] - before["ckeir_generated_tokens_total"]
    assert generated < 4000  # it stopped long before its max_tokens


def test_tokenize_and_detokenize(server, prog):
    status, raw = server.request("/tokenize", {"content": PROMPTS[0]})
    assert status == 200 and json.loads(raw)["tokens"] == prog.tokenizer.encode(PROMPTS[0])
    status, raw = server.request("/detokenize", {"tokens": json.loads(raw)["tokens"]})
    assert status == 200 and json.loads(raw)["content"] == PROMPTS[0]
    status, raw = server.request("/detokenize", {"tokens": [-1]})
    assert status == 400 and json.loads(raw)["error"]["param"] == "tokens"


def test_metrics_count_the_requests(server):
    m = server.metrics()
    assert m["ckeir_slots"] == 4
    assert m["ckeir_requests_total"] >= 10
    assert m["ckeir_generated_tokens_total"] > 0 and m["ckeir_prompt_tokens_total"] > 0
    assert m["ckeir_queue_length"] == 0 and m["ckeir_tokens_per_second"] > 0
