"""The served model under concurrent load answers every request correctly (bench/serving_load.py).

Runs the load benchmark with 200 requests from 8 client threads against a real
``mlflow models serve`` on loopback (one image per request, 32 distinct demo
JPEGs) and checks its verdict: every answer HTTP 200 with the documented keys and
the same prediction as an in-process ImagePredictor on the same image. The full
1,000-request run and its figures are in the README (``bench/serving_load.py``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_concurrent_requests_all_answered_correctly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "serving_load.py"),
            *("--requests", "200", "--concurrency", "8", "--out", str(tmp_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["requests"] == 200 and result["concurrency"] == 8
    assert result["correct"] == 200 and result["errors"] == 0 and result["error_samples"] == []
    # Answers differ between images: a mixed-up answer would have been caught.
    assert result["distinct_reference_answers"] == result["images"] == 32
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] and math.isfinite(lat["max"])
    assert result["requests_per_s"] > 0
    assert "200 correct, 0 wrong" in proc.stdout


def test_answer_check_catches_a_wrong_answer() -> None:
    """The comparison the benchmark relies on flags each kind of difference."""
    sys.path.insert(0, str(ROOT / "bench"))
    from serving_load import LoadResult, answer_problem

    want = {
        "category": "Tee",
        "category_prob": 0.6,
        "attributes": {"texture": [{"name": "floral", "prob": 0.88}]},
        "top_k": {"texture": [{"name": "floral", "prob": 0.88}, {"name": "striped", "prob": 0.27}]},
    }
    assert answer_problem(json.loads(json.dumps(want)), want, 1e-4) is None
    wrong_cat = {**want, "category": "Dress"}
    assert "category 'Dress'" in answer_problem(wrong_cat, want, 1e-4)
    swapped = {**want, "top_k": {"texture": want["top_k"]["texture"][::-1]}}
    assert "top_k.texture" in answer_problem(swapped, want, 1e-4)
    off = {**want, "category_prob": 0.6002}
    assert "category_prob" in answer_problem(off, want, 1e-4)
    assert "keys" in answer_problem({"category": "Tee"}, want, 1e-4)
    # Nearest-rank percentiles, hand-computed: p50 of 1..10 is 5, p90 is 9, p99 is 10.
    r = LoadResult(requests=10, concurrency=1, latencies_ms=[float(x) for x in range(10, 0, -1)])
    assert (r.percentile(50), r.percentile(90), r.percentile(99)) == (5.0, 9.0, 10.0)
