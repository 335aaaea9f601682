"""Plots and the markdown report of the fleet simulation (docs/fleet.md, docs/fleet/*.png)."""

from __future__ import annotations

import io
from pathlib import Path

from loadtest.fleet.day import K2F_BIN_S, DayResult


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plots(day: DayResult) -> dict[str, bytes]:
    """PNG bytes by file name: miss ratio and replicas over the day, key-to-frame, Redis ops/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(day.hours, [100 * x for x in day.miss_ratio], color="tab:red", label="deadline misses (%)")
    ax.axhline(1.0, color="tab:red", ls=":", lw=1, label="1% SLO")
    ax.set_xlabel("hour of day")
    ax.set_ylabel("deadline misses (%)", color="tab:red")
    ax2 = ax.twinx()
    ax2.step(day.hours, day.replicas, where="post", color="tab:blue", label="replicas (GPUs busy)")
    ax2.plot(day.hours, [s / max(1, max(day.sessions)) * max(day.replicas) for s in day.sessions], color="0.6", lw=1)
    ax2.set_ylabel("replicas (blue); live load, scaled (grey)")
    ax.set_title(f"fleet day on {day.gpus} GPUs: misses and replicas (DeadlineAwarePolicy)")
    ax.set_xlim(0, 24)
    out["miss_replicas.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.2))
    xs = [(i + 0.5) * K2F_BIN_S * 1000 for i in range(len(day.k2f_hist))]
    total = sum(day.k2f_hist) or 1.0
    ax.plot(xs, [w / total for w in day.k2f_hist], color="tab:purple")
    for q, ls in ((50, "--"), (99, ":")):
        ax.axvline(1000 * day.k2f_percentile(q), color="k", ls=ls, lw=1, label=f"p{q}")
    ax.set_xlabel("key-to-frame (ms)")
    ax.set_ylabel("share of actions")
    ax.set_xlim(0, min(xs[-1], 4 * 1000 * day.k2f_percentile(99)))
    ax.legend()
    ax.set_title("key-to-frame over the day (send -> first frame showing it)")
    out["key_to_frame.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(day.hours, [x / 1e6 for x in day.redis_ops_s], color="tab:green", label="Redis ops/s (M)")
    ax.set_xlabel("hour of day")
    ax.set_ylabel("Redis ops/s (millions)")
    ax2 = ax.twinx()
    ax2.plot(
        day.hours, [x / 1e9 for x in day.archive_bytes_s], color="tab:orange", ls="--", label="archive writes (GB/s)"
    )
    ax2.set_ylabel("archive writes (GB/s)", color="tab:orange")
    ax.legend(loc="upper left")
    ax2.legend(loc="lower right")
    ax.set_xlim(0, 24)
    ax.set_title("Redis and archive load over the day (live and evaluation steps)")
    out["redis_ops.png"] = _png(fig)
    plt.close(fig)
    return out


def validation_table(rows_by_run: list[dict]) -> str:
    lines = [
        "| run | figure | measured | simulated | difference | relative error | within 25% |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in rows_by_run:
        for r in run["rows"]:
            fmt = "{:.3f}" if "ratio" in r["figure"] else "{:.0f}" if "ms" in r["figure"] else "{:g}"
            lines.append(
                f"| {run['label']} | {r['figure']} | {fmt.format(r['measured'])} | {fmt.format(r['simulated'])} | "
                f"{r['abs_diff']:+.3g} | {100 * r['rel_error']:.0f}% | {'yes' if r['rel_error'] <= 0.25 else 'NO'} |"
            )
    return "\n".join(lines)


def write_report(path: Path, text: str, images: dict[str, bytes]) -> list[Path]:
    from loadtest.fleet.service import write_atomic

    written = []
    folder = path.parent / path.stem
    for name, data in images.items():
        write_atomic(folder / name, data)
        written.append(folder / name)
    write_atomic(path, text)
    written.append(path)
    return written
