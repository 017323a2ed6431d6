"""PNG plots of an experiment's tables (matplotlib, headless Agg backend).

Which plots an experiment gets follows from its tables: a recall trajectory, per-cycle (or
per-day) recall / degraded / perplexity drift, the lambda and consolidation grids, the ablation
bars, and a hypnogram of every sleep's stages and their durations.
"""

from __future__ import annotations

from pathlib import Path

# A hypnogram's depth levels, lightest at the top: the stages in the order a full sleep runs them.
STAGE_LEVELS = ["wake", "health", "snapshot", "curate", "select", "audit", "maintain", "sws", "rem", "fold",
                "validate", "rollback", "report", "reinforce"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    _pyplot().close(fig)
    return name


def plot_trajectory(rows: list[dict], out: Path, threshold: float) -> str:
    """Recall of everything injected so far after each injection (capacity, convergence waves)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(1, len(rows) + 1)
    ax.plot(xs, [r["recall"] for r in rows], marker="o", ms=3, label="raw recall of all facts so far")
    for phase in sorted({r.get("phase") for r in rows} - {None}):
        start = next(i for i, r in enumerate(rows, 1) if r.get("phase") == phase)
        ax.axvline(start, color="grey", ls=":", lw=1)
        ax.text(start, 0.02, f" phase {phase}", color="grey")
    ax.axhline(threshold, color="red", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set(xlabel="injection", ylabel="recall", ylim=(0, 1.05), title="Recall trajectory during wake")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.legend(loc="lower left")
    return _save(fig, out, "recall_trajectory.png")


def plot_cycles(rows: list[dict], out: Path, x: str, recall: str, degraded: str, drift: str) -> str:
    """Per sleep: recall after, degraded after, perplexity drift from the base model."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    xs = list(range(1, len(rows) + 1))
    axes[0].plot(xs, [r[recall] for r in rows], marker="o")
    axes[0].set(ylabel="raw recall", ylim=(0, 1.05))
    axes[1].bar(xs, [r[degraded] or 0 for r in rows], color="tab:orange")
    axes[1].set(ylabel="degraded")
    axes[2].plot(xs, [100 * (r[drift] or 0) for r in rows], marker="o", color="tab:red")
    axes[2].set(ylabel="perplexity drift (%)", xlabel=x)
    axes[2].set_xticks(xs, [_cycle_label(r, x) for r in rows], rotation=45 if len(xs) > 12 else 0)
    axes[0].set_title(f"After each sleep, by {x}")
    return _save(fig, out, "cycles.png")


def _cycle_label(row: dict, x: str) -> str:
    return f"{row['phase']}{row['cycle']}" if "phase" in row else str(row.get(x, ""))


def plot_lambda(rows: list[dict], out: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    lams = [max(r["lambda"], 1.0e-6) for r in rows]
    ax.plot(lams, [r["raw"] for r in rows], marker="o", label="raw recall")
    ax.plot(lams, [r.get("chat", 0) for r in rows], marker="s", label="chat recall")
    ax.set(xscale="log", xlabel="lambda (covariance weight)", ylabel="recall", ylim=(0, 1.05))
    twin = ax.twinx()
    twin.plot(lams, [100 * r.get("drift", 0) for r in rows], marker="^", color="tab:red", label="perplexity drift")
    twin.set(ylabel="perplexity drift (%)")
    ax.legend(loc="lower left")
    twin.legend(loc="lower right")
    ax.set_title("lambda sweep")
    return _save(fig, out, "lambda_sweep.png")


def plot_consolidation(rows: list[dict], out: Path) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for count in sorted({r["facts"] for r in rows}):
        mine = [r for r in rows if r["facts"] == count]
        cycles = [r["cycle"] for r in mine]
        axes[0].plot(cycles, [r["chat"] for r in mine], marker="o", label=f"{count} facts")
        axes[1].plot(cycles, [r.get("advanced_2plus", 0) for r in mine], marker="o", label=f"{count} facts")
        axes[2].plot(cycles, [100 * r.get("drift", 0) for r in mine], marker="o", label=f"{count} facts")
    axes[0].set(xlabel="sleep", ylabel="chat recall", ylim=(0, 1.05))
    axes[1].set(xlabel="sleep", ylabel="share at stage >= 2", ylim=(0, 1.05))
    axes[2].set(xlabel="sleep", ylabel="perplexity drift (%)")
    axes[0].legend()
    fig.suptitle("Consolidation sweep")
    return _save(fig, out, "consolidation_sweep.png")


def plot_ablation(rows: list[dict], out: Path) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    labels = [f"{r['sleep']}\n{r['pathway']}" for r in rows]
    xs = list(range(len(rows)))
    for ax, key, title in zip(axes, ("raw", "chat", "drift"), ("raw recall", "chat recall", "perplexity drift (%)")):
        scale = 100 if key == "drift" else 1
        ax.bar(xs, [scale * (r.get(key) or 0) for r in rows], color="tab:blue" if key != "drift" else "tab:red")
        ax.set_xticks(xs, labels, rotation=60, fontsize=7)
        ax.set_title(title)
    return _save(fig, out, "ablation.png")


def plot_hypnogram(sleeps: list[dict], out: Path) -> str | None:
    """Every sleep's stages as a step line over its elapsed seconds, lightest stage at the top,
    one sleep after another (the way a sleep lab draws a night)."""
    sleeps = [s for s in sleeps if s.get("stage_seconds")]
    if not sleeps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(sleeps)), 4))
    clock, xs, ys = 0.0, [], []
    for index, sleep in enumerate(sleeps, 1):
        ax.axvline(clock, color="grey", ls=":", lw=1)
        ax.text(clock, -0.6, f" {index}", color="grey", fontsize=8)
        for stage, seconds in sleep["stage_seconds"].items():
            if stage == "total":
                continue
            family = stage.split("-")[0]  # "validate-audit" is part of validate
            level = STAGE_LEVELS.index(family) if family in STAGE_LEVELS else len(STAGE_LEVELS) - 1
            xs += [clock, clock + seconds]
            ys += [level, level]
            clock += seconds
        xs.append(clock)
        ys.append(0)
    ax.plot(xs, ys, drawstyle="steps-post", lw=1.5)
    ax.set_yticks(range(len(STAGE_LEVELS)), STAGE_LEVELS)
    ax.invert_yaxis()
    ax.set(xlabel="seconds (sleeps one after another)", title="Hypnogram: stages of each sleep and their durations")
    return _save(fig, out, "hypnogram.png")


def plot_nights(rows: list[dict], out: Path) -> str:
    """Longevity per night: recall over all facts so far, drift and locality, sleep seconds per
    stage (stacked), and the home's size and adapter count."""
    plt = _pyplot()
    nights = [r["night"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    ax.plot(nights, [r["raw"] for r in rows], marker="o", label="raw recall")
    ax.plot(nights, [r["chat"] for r in rows], marker="s", label="chat recall")
    ax.set(xlabel="night", ylabel="share of all facts so far", ylim=(0, 1.05), title="Recall after each sleep")
    ax.legend()
    ax = axes[0][1]
    ax.plot(nights, [100 * r["drift"] for r in rows], marker="o", label="perplexity drift (%)")
    ax.plot(nights, [100 * (1 - r["locality"]) for r in rows], marker="s", label="unrelated tokens changed (%)")
    ax.plot(nights, [100 * r["leak"] for r in rows], marker="^", label="leak (%)")
    ax.set(xlabel="night", ylabel="%", title="Drift, locality and leak")
    ax.legend()
    ax = axes[1][0]
    stages = [s for s in STAGE_LEVELS if any(s in (r.get("stage_seconds") or {}) for r in rows)]
    bottom = [0.0] * len(rows)
    for stage in stages:
        heights = [(r.get("stage_seconds") or {}).get(stage, 0.0) for r in rows]
        ax.bar(nights, heights, bottom=bottom, label=stage)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set(xlabel="night", ylabel="seconds", title="Sleep seconds per stage")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1][1]
    ax.plot(nights, [r["home_bytes"] / 1e6 for r in rows], marker="o", color="tab:purple", label="home MB")
    ax.set(xlabel="night", ylabel="MB", title="Home size and adapters")
    twin = ax.twinx()
    twin.plot(nights, [r["adapters"] for r in rows], marker="s", color="tab:green", label="adapters")
    twin.plot(nights, [r["edits"] for r in rows], marker="^", color="tab:orange", label="MEMIT edits")
    twin.set_ylabel("count")
    ax.legend(loc="upper left")
    twin.legend(loc="upper right")
    for a in axes.flat:
        a.xaxis.set_major_locator(_integer_ticks())
    return _save(fig, out, "longevity-nights.png")
