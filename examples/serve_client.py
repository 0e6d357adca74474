"""A client of `ckec serve`, through the `openai` package as any OpenAI client talks to it:
the model list, one streamed chat answer, one sampled completion, and the server's metrics.

    ckec serve specs/smollm2-135m.cke --port 8080 &      # (pip install -e '.[serve]')
    python examples/serve_client.py [--base-url http://127.0.0.1:8080/v1] [--question TEXT]
                                    [-n N] [--temperature T] [--seed S]
"""

import argparse
import urllib.request

import openai


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    p.add_argument("--question", default="What is the capital of France?")
    p.add_argument("-n", type=int, default=48, help="most tokens of each answer")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    client = openai.OpenAI(base_url=args.base_url, api_key="unused")
    model = client.models.list().data[0].id
    print("model:", model)

    # a chat answer, streamed as server-sent events: print each piece as it comes
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": args.question}],
        max_tokens=args.n,
        temperature=args.temperature,
        seed=args.seed,
        stream=True,
        stream_options={"include_usage": True},
    )
    print("answer: ", end="", flush=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage is not None:
            usage = chunk.usage
    print()
    print(f"usage: prompt {usage.prompt_tokens}, completion {usage.completion_tokens}")

    # a plain completion, sampled: the same seed gives the same text
    r = client.completions.create(
        model=model,
        prompt="Once upon a time",
        max_tokens=args.n,
        temperature=0.8,
        top_p=0.95,
        seed=args.seed,
        stop=["\n\n"],
        extra_body={"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1},
    )
    print("story:", repr(r.choices[0].text), r.choices[0].finish_reason)

    # what the server has done so far (Prometheus text)
    metrics_url = args.base_url.rsplit("/v1", 1)[0] + "/metrics"
    with urllib.request.urlopen(metrics_url) as m:
        for line in m.read().decode().splitlines():
            if line.startswith(("ckeir_requests_total", "ckeir_generated_tokens_total")):
                print("metric:", line)


if __name__ == "__main__":
    main()
