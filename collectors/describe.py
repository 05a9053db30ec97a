"""What a load run records about its target before the measured window: the server's
configuration (/v1/models, vLLM's /metrics info) and the artifact manifest
(collectors/manifest.py). The application layer hands `describe_target` to the load
generator, which never imports the collectors itself."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import httpx

from servescope.collectors.manifest import fetch_manifest
from servescope.collectors.scrape import ScrapeError, scrape, server_info

log = logging.getLogger("servescope.load")


def target_config(base_url: str, client: httpx.Client) -> dict[str, Any]:
    """What the server tells about its configuration, stored with the run."""
    config: dict[str, Any] = {"url": base_url}
    config.update(server_info(base_url, "vllm", client))
    with contextlib.suppress(ScrapeError):  # not a vLLM, or no /metrics: fine
        config.update(scrape(base_url, "vllm", client=client).info)
    return config


def artifact_manifest(base_url: str, client: httpx.Client, model: str) -> dict[str, Any] | None:
    """What the target serves, stored with every run; None (and a log line) when the server
    answers nothing usable: a manifest is extra, never the reason a run fails."""
    try:
        return fetch_manifest(base_url, "auto", model, client)
    except Exception as exc:
        log.warning("%s: no artifact manifest (%s)", base_url, exc)
        return None


def describe_target(base_url: str, client: httpx.Client,
                    model: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(configuration, artifact manifest) of the target, asked before the measured window."""
    return target_config(base_url, client), artifact_manifest(base_url, client, model)
