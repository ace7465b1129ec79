"""What reviewers read: a retrain's and a promotion's outcome as Markdown and table rows.

The flows publish these as Prefect artifacts (the run's "Artifacts" tab) and the approval step
shows them; this module only turns outcomes into text. Pure module.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STAGE_STATES = {"ran": "ran", "skipped": "up to date, skipped", "restored": "restored from DVC's run cache"}


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, (int, float)):
        return f"{value:.4g}" if math.isfinite(value) else "n/a"
    return str(value)


def comparison_rows(compared: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per gated metric of a promotion's ``compared``: both values, how much worse (with its
    interval when the paired check made one), the margin and whether it passed."""
    rows = []
    for metric, entry in compared.items():
        interval = ""
        if entry.get("worse_by_low") is not None and entry.get("worse_by_high") is not None:
            interval = f"[{_number(entry['worse_by_low'])}, {_number(entry['worse_by_high'])}]"
        rows.append({"metric": metric, "direction": entry.get("direction", ""),
                     "challenger": _number(entry.get("challenger")), "champion": _number(entry.get("champion")),
                     "worse_by": _number(entry.get("worse_by")), "interval": interval,
                     "margin": _number(entry.get("margin")), "margin_source": entry.get("margin_source", ""),
                     "passed": "" if entry.get("passed") is None else ("yes" if entry["passed"] else "no")})
    return rows


def promotion_markdown(outcome: Mapping[str, Any] | None, grids: Sequence[str | Path] = ()) -> str:
    """A promotion's decision, reasons and challenger-vs-champion table (``judge_challenger``'s outcome)."""
    if not outcome:
        return "No promotion was judged in this run (nothing new was registered).\n"
    verdict = "**promoted**" if outcome.get("promoted") else "**not promoted**"
    lines = [f"## Promotion: {outcome['model']} version {outcome['version']} {verdict}", "",
             f"Champion now: version {outcome.get('champion')}.", ""]
    reasons = outcome.get("reasons") or []
    lines += [f"- {reason}" for reason in reasons] or ["- all checks passed"]
    rows = comparison_rows(outcome.get("compared") or {})
    if rows:
        columns = list(rows[0])
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    if grids:
        lines += ["", "Grids:"] + [f"- `{path}`" for path in grids]
    return "\n".join(lines) + "\n"


def retrain_markdown(outcome: Mapping[str, Any], grids: Sequence[str | Path] = ()) -> str:
    """A retrain's stages, data push, registration and promotion, for the run's summary artifact."""
    lines = ["# Retrain", "", "| stage | outcome | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {STAGE_STATES.get(s['outcome'], s['outcome'])} | {s['seconds']} |"
              for s in outcome.get("stages") or []]
    pushed = outcome.get("pushed")
    lines += ["", f"- DVC push: {'to ' + (pushed.get('remote') or 'the default remote') if pushed else 'not run'}"]
    registration = outcome.get("registration")
    lines.append("- Registration: " + (f"{registration['model']} version {registration['version']}"
                                       + (" (new, alias challenger)" if registration.get("new") else " (already registered)")
                                       if registration else "none"))
    lines += ["", promotion_markdown(outcome.get("promotion"), grids)]
    return "\n".join(lines)


def effects_rows(effects: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per metric x effect of an ablation's effects (reports/ablation.json ``effects``), for a table.

    Args:
        effects (Mapping): metric -> {"effects": [{name, estimate, low, high, verdict, seeds_needed}, ...]}.
    """
    return [{"metric": metric, "effect": e["name"], "estimate": e["estimate"], "low": e["low"], "high": e["high"],
             "verdict": e["verdict"], "seeds_needed": e["seeds_needed"]}
            for metric, entry in effects.items() for e in entry["effects"]]
