"""The vision encoder's tile-cache counters as Triton custom metrics (Prometheus, the metrics port).

`pb_utils.MetricFamily` exists in python_backend since 23.05 (the pytriton 0.7 tritonserver used
here has it); without it the counters are logged once per `LOG_EVERY` updates instead.
Names (all labelled model="vision_encoder"):
  nvlm_vision_tile_cache_hits / _misses / _evictions   counters (tiles)
  nvlm_vision_tile_cache_bytes / _capacity_bytes / _entries   gauges
  nvlm_vision_encoder_calls                            counter (encoder invocations)
"""

from __future__ import annotations

PREFIX = "nvlm_vision_"
COUNTERS = {"hits": "tile_cache_hits", "misses": "tile_cache_misses", "evictions": "tile_cache_evictions",
            "encoder_calls": "encoder_calls"}
GAUGES = {"bytes": "tile_cache_bytes", "capacity_bytes": "tile_cache_capacity_bytes", "entries": "tile_cache_entries"}
DESCRIPTIONS = {"hits": "tiles whose embeddings came from the cache", "misses": "tiles the encoder had to run on",
                "evictions": "cache entries dropped to stay within the byte bound",
                "encoder_calls": "vision encoder invocations",
                "bytes": "bytes of embeddings held by the tile cache",
                "capacity_bytes": "the tile cache's bound in bytes (0: disabled)", "entries": "tiles cached"}
LOG_EVERY = 100


class CacheMetrics:
    """Mirrors handler.cache_stats() into metric families; counters advance by the difference."""

    def __init__(self, pb, *, model: str):
        self.pb, self.model, self._last, self._updates = pb, model, {}, 0
        self.metrics, self.families = {}, []  # the families must outlive their metrics (the stub checks)
        family = getattr(pb, "MetricFamily", None)
        if family is None:
            self.available = False
            return
        self.available = True
        for key, name in {**COUNTERS, **GAUGES}.items():
            kind = family.COUNTER if key in COUNTERS else family.GAUGE
            self.families.append(family(name=PREFIX + name, description=DESCRIPTIONS[key], kind=kind))
            self.metrics[key] = self.families[-1].Metric(labels={"model": model})

    def update(self, stats: dict[str, int]) -> None:
        self._updates += 1
        if not self.available:
            if self._updates % LOG_EVERY == 1:
                print(f"[vision_encoder] tile cache: {stats} (this python backend has no MetricFamily)", flush=True)
            return
        try:
            for key, metric in self.metrics.items():
                value = stats.get(key, 0)
                if key in COUNTERS:
                    delta = value - self._last.get(key, 0)
                    if delta > 0:
                        metric.increment(delta)
                else:
                    metric.set(value)
        except Exception as exc:  # metrics are an aid: never fail a request or the model's load over them
            print(f"[vision_encoder] metrics update failed ({exc}); logging the counters instead", flush=True)
            self.available = False
        self._last = dict(stats)
