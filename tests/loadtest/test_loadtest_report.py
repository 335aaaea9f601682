from loadtest.run import check_slo, summarize


def test_summary_and_slo_checks():
    recs = [
        {"t": i * 0.1, "name": "Step", "ms": float(10 + i), "ok": i != 5, "code": "OK", "deadline_miss": i > 7}
        for i in range(10)
    ]
    s = summarize(recs, load_s=1.0)["Step"]
    assert s["count"] == 10 and s["errors"] == 1 and abs(s["error_ratio"] - 0.1) < 1e-9
    assert s["rps"] == 9 and s["p50_ms"] == 14.0 and s["p99_ms"] == 19.0
    rows = check_slo(
        {"Step": s}, {"Step": {"p50_ms": 20, "max_error_ratio": 0.05, "min_rps": 5}, "CreateSession": {"p50_ms": 1}}
    )
    verdict = {(r[0], r[1]): r[4] for r in rows}
    assert verdict == {
        ("Step", "p50_ms"): True,
        ("Step", "max_error_ratio"): False,
        ("Step", "min_rps"): True,
        ("CreateSession", "p50_ms"): False,
    }  # a kind that never ran fails its SLO
