from promptrun.summary_table import render

SUMMARY = {
    "batch_key": "2026-11-22",
    "total": 3,
    "counts": {"queued": 0, "processing": 0, "succeeded": 2, "failed": 1},
    "progress": 1.0,
    "started_at": "2026-11-22T13:00:01+00:00",
    "ended_at": "2026-11-22T13:00:09+00:00",
    "p50_duration_ms": 120.0,
    "p95_duration_ms": 300.5,
    "input_tokens": 1200,
    "output_tokens": 340,
    "cost_usd": 0.000123,
    "by_model": [
        {
            "model": "offline-fast",
            "total": 3,
            "counts": {"succeeded": 2, "failed": 1},
            "p50_duration_ms": 120.0,
            "p95_duration_ms": 300.5,
            "input_tokens": 1200,
            "output_tokens": 340,
            "cost_usd": 0.000123,
        },
    ],
    "top_errors": [{"error_kind": "auth", "error_message": "no key", "jobs": 1}],
}


def test_render_shows_progress_models_totals_and_errors() -> None:
    out = render(SUMMARY).splitlines()
    assert out[0].startswith("batch 2026-11-22: 100% finished (3/3 jobs)")
    assert out[1] == "status: succeeded 2, failed 1"
    header = out[2].split()
    assert header[:4] == ["model", "jobs", "ok", "failed"]
    model_row = out[4].split()
    assert model_row == ["offline-fast", "3", "2", "1", "120", "300", "1,200", "340", "0.000123"]
    assert out[5].split()[0] == "total"
    assert out[-1] == "  1 x auth: no key"
