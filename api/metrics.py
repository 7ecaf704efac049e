"""GET /metrics: Prometheus text built from the counters every process keeps in the store.

Workers count transitions, run and queue times and webhook outcomes into one Redis hash, so any API
replica shows the whole service; queue depths are the lengths of Celery's Redis lists.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from jobs.record import ACTIVE, STATUSES
from jobs.store import histogram_from_stats

WEBHOOK_OUTCOMES = ("delivered", "retrying", "gave_up", "refused")


class _Snapshot:
    """A collector that yields metric families built beforehand (the store is read asynchronously)."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def render(stats: dict[str, str], depths: dict[str, int], workers: list[tuple[str, list[str]]],
           pending_events: int = 0) -> bytes:
    active = GaugeMetricFamily("upscaler_jobs", "Jobs now queued or running", labels=["status"])
    for status in ACTIVE:
        active.add_metric([status], max(0, int(stats.get(f"active:{status}", 0))))
    totals = CounterMetricFamily("upscaler_jobs_status", "Jobs that entered each status (queued = accepted)",
                                 labels=["status"])
    for status in STATUSES:
        totals.add_metric([status], int(stats.get(f"total:{status}", 0)))
    depth = GaugeMetricFamily("upscaler_queue_depth", "Messages waiting in each queue", labels=["queue"])
    for queue, length in depths.items():
        depth.add_metric([queue], length)
    live = GaugeMetricFamily("upscaler_workers", "Workers with a recent heartbeat, by queue", labels=["queue"])
    for queue in depths:
        live.add_metric([queue], sum(1 for _, queues in workers if queue in queues))
    families = [active, totals, depth, live]
    for metric, help_text in (("queue", "Seconds from submission to the start of a job"),
                              ("run", "Seconds a job ran, from start to its end")):
        family = HistogramMetricFamily(f"upscaler_job_{metric}_seconds", help_text, labels=["method"])
        for method, (buckets, total) in sorted(histogram_from_stats(stats, metric).items()):
            family.add_metric([method], buckets, total)
        families.append(family)
    deliveries = CounterMetricFamily("upscaler_webhook_deliveries", "Webhook delivery attempts by outcome",
                                     labels=["outcome"])
    for outcome in WEBHOOK_OUTCOMES:
        deliveries.add_metric([outcome], int(stats.get(f"webhook:{outcome}", 0)))
    families.append(deliveries)
    pending = GaugeMetricFamily("upscaler_webhook_events_pending", "Webhook events waiting in the outbox")
    pending.add_metric([], pending_events)
    reaper = CounterMetricFamily("upscaler_reaper_actions", "Jobs the reaper put back in the queue (lease lapsed) "
                                 "or whose lost message it sent again", labels=["action"])
    for action in ("requeued", "redispatched"):
        reaper.add_metric([action], int(stats.get(f"reaper:{action}", 0)))
    families += [pending, reaper]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return generate_latest(registry)
