"""The shipped Prometheus configuration pointed at loopback, and its HTTP API.

Used by the rehearsal (targets: the processes behind each Service) and by
tests/integration/test_prometheus_scrape.py (one locally started service).
"""
from __future__ import annotations

import copy
import json
import urllib.parse
import urllib.request
from collections.abc import Callable

SD_KINDS = ("dns_sd_configs", "static_configs")
# (job name, "dns_sd" | "static", the dns_sd entry or the static target) -> loopback targets
TargetMap = Callable[[str, str, object], list[str]]


def loopback_config(config: dict, targets: TargetMap, interval: str | None = None) -> dict:
    """A copy of a scrape configuration with every dns_sd and static target replaced by
    ``targets(...)``; ``interval`` (e.g. "1s") shortens scrape and evaluation intervals.
    Any other service discovery raises ValueError (it cannot be pointed at loopback)."""
    config = copy.deepcopy(config)
    if interval:
        config.setdefault("global", {}).update(scrape_interval=interval, scrape_timeout=interval,
                                               evaluation_interval=interval)
    for job in config.get("scrape_configs", []):
        other = [key for key in job if key.endswith("_sd_configs") and key not in SD_KINDS]
        if other:
            raise ValueError(f"scrape job {job['job_name']} uses {other[0]}: only dns_sd and static targets can "
                             f"be pointed at loopback")
        static = []
        for entry in job.pop("dns_sd_configs", []):
            static.append({"targets": targets(job["job_name"], "dns_sd", entry)})
        for entry in job.pop("static_configs", []):
            static.append({"targets": [t for target in entry.get("targets", [])
                                       for t in targets(job["job_name"], "static", target)],
                           **({"labels": entry["labels"]} if "labels" in entry else {})})
        job["static_configs"] = static
    return config


def api(base: str, path: str, **params: str) -> dict:
    """GET ``base + path`` of the Prometheus HTTP API; the ``data`` of a successful answer."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus {path} answered {body}")
    return body["data"]


def target_health(base: str) -> list[dict]:
    """job, instance, health and last error of every active target."""
    return [{"job": t["labels"]["job"], "instance": t["labels"].get("instance", ""), "health": t["health"],
             "error": t.get("lastError", ""), "url": t.get("scrapeUrl", "")}
            for t in api(base, "/api/v1/targets")["activeTargets"]]
