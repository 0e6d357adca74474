"""`/metrics`: the scheduler's counters (`Scheduler.metrics()`) in Prometheus' text format,
read at each scrape by a prometheus_client collector of its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class SchedulerCollector:
    """The counters and gauges of one scheduler, named `ckeir_*`."""

    def __init__(self, model):
        self.model = model

    def collect(self):
        scheduler = self.model.scheduler
        if scheduler is None:  # still loading
            return
        m = scheduler.metrics()
        yield _counter("requests", "requests received (refused ones included)", m.requests)
        done = CounterMetricFamily(
            "ckeir_requests_finished", "requests finished, by reason", labels=["reason"]
        )
        for reason, count in m.finished.items():
            done.add_metric([reason], count)
        yield done
        yield _counter("prompt_tokens", "prompt tokens prefilled", m.prompt_tokens)
        yield _counter("generated_tokens", "tokens generated", m.generated_tokens)
        yield _counter("steps", "scheduler steps run", m.steps)
        yield _counter("step_tokens", "tokens computed in steps (prefill + decode)", m.step_tokens)
        yield _counter("step_seconds", "seconds spent inside steps", m.step_seconds)
        rate = m.generated_tokens / m.step_seconds if m.step_seconds else 0.0
        yield _gauge("tokens_per_second", "generated tokens per second of stepping", rate)
        yield _gauge("slots", "sequence slots", m.slots)
        yield _gauge("busy_slots", "slots holding a running sequence", m.busy_slots)
        yield _gauge("queue_length", "requests waiting for a slot", m.queue_length)
        yield _gauge("last_step_tokens", "tokens computed in the last step", m.last_step_tokens)


def _counter(name: str, text: str, value) -> CounterMetricFamily:
    return CounterMetricFamily(f"ckeir_{name}", text, value=value)


def _gauge(name: str, text: str, value) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"ckeir_{name}", text, value=value)


def registry_for(model) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(model))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
