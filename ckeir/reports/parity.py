"""Parity of a distributed run against its single-rank twin (the same spec with every phase
on one node): are the greedy tokens the same, and how far apart are the logits?"""

from __future__ import annotations

import numpy as np


def compare(tokens, logits: dict, ref_tokens, ref_logits: list) -> dict:
    """`logits` maps step -> array (from whichever rank computed them); `ref_logits` is the
    single-rank run's list in step order."""
    steps = [i for i in sorted(logits) if i < len(ref_logits)]
    diffs = [float(np.abs(logits[i] - ref_logits[i]).max()) for i in steps]
    scale = max((float(np.abs(ref_logits[i]).max()) for i in steps), default=1.0)
    first = next(
        (i for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=False)) if a != b), None
    )
    return {
        "tokens_identical": list(tokens) == list(ref_tokens),
        "tokens_compared": min(len(tokens), len(ref_tokens)),
        "first_divergence": first,
        "logit_steps_compared": len(steps),
        "logits_bitwise_identical": bool(steps)
        and all(np.array_equal(logits[i], ref_logits[i]) for i in steps),
        "max_abs_logit_diff": max(diffs, default=0.0),
        "max_rel_logit_diff": max(diffs, default=0.0) / scale if scale else 0.0,
    }


def describe(p: dict) -> str:
    toks = (
        "tokens identical"
        if p["tokens_identical"]
        else f"tokens differ from step {p['first_divergence']}"
    )
    if p["logits_bitwise_identical"]:
        logits = "logits bitwise identical"
    else:
        logits = (
            f"max |Δlogit| {p['max_abs_logit_diff']:.2e} "
            f"({p['max_rel_logit_diff']:.1e} of the logit scale)"
        )
    return f"parity vs single rank: {toks} ({p['tokens_compared']}), {logits}"
