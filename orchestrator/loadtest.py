"""Load tests: profiles, synthetic prompts, and the latency metrics derived from raw stamps.

Metric names follow vLLM's ``bench serve`` (other tools' names in brackets):

- TTFT, time to first token: send -> first non-empty content token (guidellm: time_to_first_token);
- TPOT, time per output token, per request: (E2EL - TTFT) / (output tokens - 1) (AIPerf: inter-token
  latency per request; guidellm: time_per_output_token);
- ITL, inter-token latency: gaps between content chunks, pooled over requests;
- E2EL, end-to-end latency: send -> last byte (guidellm: request_latency);
- request throughput, output token throughput, total token throughput (per second of the
  measured window, warm-up excluded);
- queue time: how long a request waited in the client before it was sent (a saturated client shows
  here, never hidden inside the latencies: no coordinated omission);
- post time: how long the client took after a reply's last byte arrived until the request freed
  its slot (decoding the stream, counting tokens): with queue time, the client's whole share of a
  closed loop's cycle (throughput x (queue + E2EL + post) = concurrency);
- dispatch lag (rate-based loads): actual send time - intended send time of the schedule;
- goodput: fraction and rate of requests that meet every SLO (``--slo ttft=200ms,tpot=50ms``).

Each is reported as mean and percentiles (p50, p90, p99 by default), all recomputable from the
records on disk.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator import timing
from orchestrator.errors import LoadConfigError
from orchestrator.manifest import MODES, LoadProfile
from orchestrator.metrics import LATENCIES, Distribution, latencies
from orchestrator.records import Exchange, LoadRecord, Timing

# One type for a load test's profile: the manifest's load_test section, the CLI's overrides on
# top of it, and run.json's copy (orchestrator.manifest.LoadProfile).
__all__ = ["MODES", "LoadConfigError", "LoadProfile", "level_metrics", "parse_slo", "schedule"]


def parse_slo(text: str) -> dict[str, float]:
    """``ttft=200ms,tpot=50ms`` (or seconds: ``e2el=2s``) -> thresholds in milliseconds."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\w+)\s*=\s*([\d.]+)\s*(ms|s)?", part)
        if not m:
            raise LoadConfigError(f"cannot read SLO {part!r} (expected e.g. ttft=200ms)")
        value = float(m.group(2)) * (1000.0 if m.group(3) == "s" else 1.0)
        out[m.group(1).lower()] = value
    return out


def schedule(mode: str, rate: float, n: int, seed: int) -> list[float]:
    """Intended send offsets (seconds from the level's start) for rate-based modes."""
    if mode == "constant":
        return [i / rate for i in range(n)]
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def synthetic_prompts(tokenizer: Any, n: int, input_tokens: int, seed: int) -> list[str]:
    """Prompts of ``input_tokens`` tokens of the model's own tokenizer, each with a unique prefix.

    Random vocabulary ids are decoded, re-encoded and cut to length, so the text really is that
    many tokens for this tokenizer (the chat template adds its own few on top). The unique prefix
    keeps prefix caches from turning a load test into a cache test.
    """
    vocab = tokenizer.get_vocab_size(with_added_tokens=False)
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        prefix = f"{i}: "
        budget = max(1, input_tokens - len(tokenizer.encode(prefix, add_special_tokens=False).ids))
        ids = [rng.randrange(vocab) for _ in range(budget * 2)]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        cut = tokenizer.encode(text, add_special_tokens=False).ids[:budget]
        prompts.append(prefix + tokenizer.decode(cut, skip_special_tokens=True))
    return prompts


# A load level's latencies (metrics.LATENCIES), the server's own last.
def level_latencies() -> tuple[str, ...]:
    """A load level's latencies: every entry of metrics.LATENCIES marked ``load``."""
    return tuple(name for name, m in LATENCIES.items() if m.load)


def level_metrics(records: Sequence[LoadRecord], profile: LoadProfile) -> dict[str, Any]:
    """Every metric of one level from its records (warm-up, cool-down and failed requests excluded).

    Throughputs count every completion (warm-up and cool-down ones too) that ends inside the
    measured window, from the first measured send to the last measured end (rate modes: the span
    of sends shifted by the median latency, so that the drain does not count as load): around the measured
    requests the load was kept at its level, so this is the steady-state rate.
    """
    measured = [r for r in records if r.measured]
    ok = [r for r in measured if r.timed]
    lag = [r.dispatch_lag * 1000.0 for r in measured if r.dispatch_lag is not None]
    window = 0.0
    in_window: list[LoadRecord] = []
    rate_mode = any(r.dispatch_lag is not None for r in measured)
    if ok:
        start = min(timing_of(r).wall_send for r in ok)
        end = max(timing_of(r).wall_end for r in ok)
        last_send = max(timing_of(r).wall_send for r in ok)
        lo, hi = start, end
        if rate_mode and last_send > start:
            # An open loop sends nothing after its last scheduled request, and the time it then
            # waits for the last replies (the drain) is not load at this rate. The window is the
            # sending span, shifted by the median latency: the completions the load of that span
            # produced, counted over its length.
            shift = timing.percentile([timing_of(r).e2e for r in ok], 50) or 0.0
            lo, hi = start + shift, last_send + shift
        window = hi - lo
        in_window = [r for r in records if r.timed and lo < timing_of(r).wall_end <= hi]
    out_tokens = sum(r.completion_tokens or 0 for r in in_window)
    # Prompt tokens as the server counted them, else as the model's tokenizer did (llama.cpp's
    # streams carry no usage).
    in_tokens = sum(r.prompt_tokens or (r.prompt_token_counts or {}).get("tokenizer") or 0 for r in in_window)
    p = profile.percentiles
    # The profile's percentiles, and the median always: who set the pace, the roofline and the
    # curves read it whatever was asked.
    names = level_latencies()
    found = latencies(ok, measured, names, sorted({*p, 50.0}))
    metrics: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(measured) - len(ok),
        "duration_s": window,
        "request_throughput": len(in_window) / window if window else None,
        "output_throughput": out_tokens / window if window else None,
        "total_token_throughput": (out_tokens + in_tokens) / window if window else None,
        "mean_output_tokens": sum(r.completion_tokens or 0 for r in ok) / len(ok) if ok else None,
        **{name: found[name].to_json() for name in names if not LATENCIES[name].server},
        "dispatch_lag_ms": Distribution.of(lag, p).to_json() if lag else None,
    }
    # The server's own account, where it gives one (llama-server's timings).
    if any(r.server_timing is not None for r in ok):
        metrics.update({name: found[name].to_json() for name in names if LATENCIES[name].server})
    # A level whose requests outlast it is one wave of requests, not a steady state.
    e2e_median = found["e2el_ms"].p(50)
    metrics["one_wave"] = bool(profile.duration and e2e_median and e2e_median / 1000.0 >= profile.duration)
    metrics["token_count_agreement"] = token_agreement((r.token_counts, r.token_source) for r in ok)
    metrics["prompt_token_agreement"] = token_agreement((r.prompt_token_counts, "usage") for r in ok)
    if profile.slo:
        good = [r for r in ok if _meets(r, profile.slo)]
        metrics["goodput"] = {
            "slo_ms": profile.slo,
            "fraction": len(good) / len(measured) if measured else None,
            "rate": len(good) / window if window else None,
        }
    return metrics


def timing_of(record: Exchange) -> Timing:
    """The timing of a record known to be timed (``record.timed``)."""
    assert record.timing is not None
    return record.timing


def _meets(record: LoadRecord, slo: dict[str, float]) -> bool:
    values = {"ttft": record.ttft, "tpot": record.tpot, "e2el": record.e2e, "itl": max(record.itl, default=0.0)}
    for name, limit_ms in slo.items():
        v = values.get(name)
        if v is None or v * 1000.0 > limit_ms:
            return False
    return True


def token_agreement(counted: Iterable[tuple[dict[str, int] | None, str | None]]) -> dict[str, Any]:
    """How token counts of different sources compare (server usage vs the model's tokenizer).

    ``counted`` gives, per request, its counts by source and the source the others are compared to.
    """
    pairs: dict[str, list[int]] = {}
    for counts_or_none, primary in counted:
        # One source alone (the common case) has nothing to agree with.
        if counts_or_none is None or len(counts_or_none) < 2 or primary not in counts_or_none:
            continue
        counts = counts_or_none
        for source, n in counts.items():
            if source != primary:
                pairs.setdefault(f"{primary} vs {source}", []).append(n - counts[primary])
    return {
        key: {
            "n": len(d),
            "exact": sum(x == 0 for x in d) / len(d),
            "mean_abs_diff": sum(abs(x) for x in d) / len(d),
            "max_abs_diff": max(abs(x) for x in d),
        }
        for key, d in pairs.items()
    }


def task_prompts(name: str, data_dir: Any, n: int, seed: int) -> list[tuple[tuple[str, str], ...]]:
    """A benchmark's own prompts (chat turns as the accuracy run sends them), a seeded sample of n."""
    from orchestrator.tasks import build_task

    samples = build_task(name, data_dir).samples()
    rng = random.Random(seed)
    return [samples[rng.randrange(len(samples))].messages for _ in range(n)]
