"""GET /metrics for Prometheus, computed at scrape time from PostgreSQL and Redis.

Why at scrape time: the web server runs several gunicorn processes and the workers run on
other machines, so in-process counters would each see a fraction of the truth. The database
and the broker see all of it, so every number here is correct whichever process answers:

* pneumoscan_queue_depth{queue}                 messages waiting in Redis (all priorities)
* pneumoscan_images{status}                     images per status now
* pneumoscan_images_processed_total             images with a result
* pneumoscan_image_failures_total               images that failed (reason in Image.error)
* pneumoscan_inference_seconds (histogram)      model time per image (batched forward / n)
* pneumoscan_end_to_end_seconds (histogram)     upload -> result stored, per finished image
* pneumoscan_studies{status}                    studies per status now

Flower's own /metrics adds per-worker task counts and runtimes (workers online, etc.).
A scrape costs two aggregate queries over the images/results tables and one Redis round trip.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

INFERENCE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
END_TO_END_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def _histogram(name: str, doc: str, queryset: object, field: str, buckets: tuple[float, ...],
               to_value: object) -> HistogramMetricFamily:
    """A cumulative histogram from one aggregate query: count(field <= bound) per bucket."""
    aggregates = {f"le_{i}": Count("pk", filter=Q(**{f"{field}__lte": to_value(b)}))
                  for i, b in enumerate(buckets)}
    row = queryset.aggregate(total=Count("pk"), total_sum=Sum(field), **aggregates)  # type: ignore[attr-defined]
    total_sum = row["total_sum"] or 0
    if isinstance(total_sum, timedelta):
        total_sum = total_sum.total_seconds()
    elif field == "inference_ms":
        total_sum = total_sum / 1000.0
    metric = HistogramMetricFamily(name, doc, unit="")
    metric.add_metric(
        [], buckets=[(repr(b), row[f"le_{i}"]) for i, b in enumerate(buckets)]
        + [("+Inf", row["total"])], sum_value=float(total_sum),
    )
    return metric


class PneumoScanCollector:
    def collect(self) -> Iterator[Metric]:
        from backend.studies.dispatch import queue_depths
        from backend.studies.models import Image, Result, Study

        depth = GaugeMetricFamily("pneumoscan_queue_depth",
                                  "Messages waiting in the broker, per queue.", labels=["queue"])
        try:
            for queue, count in queue_depths().items():
                depth.add_metric([queue], count)
        except Exception:  # noqa: S110 - Redis down: no depth samples; the scrape still works
            pass
        yield depth
        up = GaugeMetricFamily("pneumoscan_broker_up", "1 when Redis answered this scrape.")
        up.add_metric([], 1 if depth.samples else 0)
        yield up

        by_status = dict(Image.objects.values_list("status").annotate(n=Count("pk")))
        images = GaugeMetricFamily("pneumoscan_images", "Images per status.", labels=["status"])
        for status in Image.Status.values:
            images.add_metric([status], by_status.get(status, 0))
        yield images
        processed = CounterMetricFamily("pneumoscan_images_processed",
                                        "Images classified (with a stored result).")
        processed.add_metric([], by_status.get(Image.Status.DONE, 0))
        yield processed
        failures = CounterMetricFamily("pneumoscan_image_failures",
                                       "Images that ended in a recorded failure.")
        failures.add_metric([], by_status.get(Image.Status.FAILED, 0))
        yield failures

        studies_by_status = dict(Study.objects.values_list("status").annotate(n=Count("pk")))
        studies = GaugeMetricFamily("pneumoscan_studies", "Studies per status.",
                                    labels=["status"])
        for status in Study.Status.values:
            studies.add_metric([status], studies_by_status.get(status, 0))
        yield studies

        yield _histogram(
            "pneumoscan_inference_seconds", "Model time per image (batched forward / batch).",
            Result.objects.filter(inference_ms__isnull=False), "inference_ms",
            INFERENCE_BUCKETS_S, lambda b: b * 1000.0,
        )
        finished = Image.objects.filter(status=Image.Status.DONE, finished_at__isnull=False)
        finished = finished.annotate(e2e=ExpressionWrapper(F("finished_at") - F("created_at"),
                                                           output_field=DurationField()))
        yield _histogram(
            "pneumoscan_end_to_end_seconds", "Upload to stored result, per image.",
            finished, "e2e", END_TO_END_BUCKETS_S, lambda b: timedelta(seconds=b),
        )


def _authorised(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _authorised(request):
        return HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PneumoScanCollector())  # type: ignore[arg-type]
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
