"""What the load scenarios report: percentiles, and the latency / replicas plot (shared by
``loadtest.run`` and ``loadtest.live``)."""

from __future__ import annotations

from pathlib import Path

APPS = ("image", "sessions", "dynamics", "web")
SCALED = "DynamicsModel-platformer"  # the default model's deployment: what the autoscale scenario loads
SCALED_KEY = f"dynamics/{SCALED}"


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def plot(records: list[dict], replicas: list[dict], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name in sorted({r["name"] for r in records}):
        pts = [(r["t"], r["ms"]) for r in records if r["name"] == name and r["ok"]]
        if pts:
            ax1.scatter(*zip(*pts), s=4, alpha=0.4, label=name)
        errs = [(r["t"], r["ms"]) for r in records if r["name"] == name and not r["ok"]]
        if errs:
            ax1.scatter(*zip(*errs), s=10, marker="x", color="red", label=f"{name} errors")
    # rolling p50 / p99 over 5 s windows, all kinds together
    if records:
        end = max(r["t"] for r in records)
        ts, p50, p99 = [], [], []
        t = 0.0
        while t < end:
            w = [r["ms"] for r in records if t <= r["t"] < t + 5 and r["ok"]]
            if w:
                ts.append(t + 2.5)
                p50.append(percentile(w, 50))
                p99.append(percentile(w, 99))
            t += 5
        ax1.plot(ts, p50, color="black", label="p50 (5 s)")
        ax1.plot(ts, p99, color="black", linestyle="--", label="p99 (5 s)")
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax1.legend(loc="upper left", fontsize=7)
    ax1.set_title(title)
    for i, app in enumerate(APPS):  # small offsets keep overlapping lines visible
        ax2.step([s["t"] for s in replicas], [s[app] + 0.04 * (i - 1) for s in replicas], where="post", label=app)
    ax2.set_ylabel("RUNNING replicas")
    ax2.set_xlabel("seconds since load start")
    ax2.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
