"""bench/train_throughput.py's summary: the median and spread of each profile's runs, its goal check against the
reference, and the printed table."""

from __future__ import annotations

#: (min MFU, min speed-up vs the reference's median or None, max peak reserved GiB or None)
GOALS = {
    "auto": (0.40, 16.0, None),
    "auto-80": (0.36, None, 80),
    "auto-40": (0.30, None, 40),
    "auto-22": (0.27, None, 22),
}


def summarize(profile: str, runs: list[dict], reference: dict | None) -> dict:
    """Median and spread over the runs; the goal check against the reference's median."""
    import statistics

    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"profile": profile, "error": runs[0]["error"], "runs": runs}
    speeds = [r["tokens_per_s"] for r in ok]
    median = statistics.median(speeds)
    summary = {
        "profile": profile,
        "runs": ok,
        "failed_runs": len(runs) - len(ok),
        "tokens_per_s_median": median,
        "tokens_per_s_min": min(speeds),
        "tokens_per_s_max": max(speeds),
        "spread_pct": 100 * (max(speeds) - min(speeds)) / median,
        "mfu_median": statistics.median(r["mfu"] for r in ok),
        "peak_reserved_gib_max": max(r["peak_reserved_gib"] for r in ok),
        "check_loss": ok[0]["check_loss"],
        "settings": ok[0].get("settings", {}),
    }
    if reference and "error" not in reference:
        summary["speedup_vs_reference"] = median / reference["tokens_per_s_median"]
        summary["check_loss_vs_reference"] = summary["check_loss"] - reference["check_loss"]
    goal = GOALS.get(profile)
    if goal:
        mfu, speedup, peak = goal
        met = summary["mfu_median"] >= mfu
        met &= speedup is None or summary.get("speedup_vs_reference", 0) >= speedup
        met &= peak is None or summary["peak_reserved_gib_max"] <= peak
        summary["goal"] = {"min_mfu": mfu, "min_speedup": speedup, "max_peak_gib": peak, "met": bool(met)}
    return summary


def print_table(summaries: list[dict]) -> None:
    print(
        f"\n{'profile':<10} {'tokens/s':>9} {'spread':>7} {'x ref':>6} {'peak GiB':>9} {'MFU':>6} {'micro-batch':>12} "
        f"{'recompute':>10} {'loss Δ':>8}  goal"
    )
    for r in summaries:
        if "error" in r:
            print(f"{r['profile']:<10} failed ({r['error']})")
            continue
        settings = r.get("settings", {})
        profile = settings.get("memory_profile") or {}
        recompute = (
            f"{profile.get('recomputed_layers', '-')}" if profile else ("all" if r["profile"] == "reference" else "-")
        )
        goal = r.get("goal")
        goal_text = ""
        if goal:
            parts = [f"MFU >= {goal['min_mfu']:.0%}"]
            parts += [f">= {goal['min_speedup']}x"] if goal["min_speedup"] else []
            parts += [f"<= {goal['max_peak_gib']} GiB"] if goal["max_peak_gib"] else []
            goal_text = f"{', '.join(parts)}: {'met' if goal['met'] else 'MISSED'}"
        print(
            f"{r['profile']:<10} {r['tokens_per_s_median']:>9.0f} {r['spread_pct']:>6.1f}% "
            f"{r.get('speedup_vs_reference', 1.0):>5.1f}x {r['peak_reserved_gib_max']:>9.1f} {r['mfu_median']:>6.1%} "
            f"{settings.get('tokens_per_step', 4 * 0) or 'batch 4':>12} {recompute:>10} "
            f"{r.get('check_loss_vs_reference', 0.0):>+8.4f}  {goal_text}"
        )
