"""The ablation matrix and its comparison table: pure functions (no DVC, MLflow or Prefect calls).

The matrix is params.yaml ``ablation`` (shadow.enabled x captions.augmentation.caption_dropout x
the training seeds ``ablation.seeds``); each :class:`Variant` (one arm trained with one seed) says
which params it sets, how DVC receives them (``dvc exp run -S``) and how its MLflow run is tagged. :func:`comparison_rows` and :func:`markdown_table` turn the variants'
evaluations into reports/ablation.md; :func:`experiments_of` and :func:`rerun_reason` read what
DVC and MLflow already hold so that a rerun skips finished variants.
:mod:`components.evaluation.ablation_run` does the DVC and MLflow calls around them;
``flows/ablation.py`` wires that into Prefect.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from components.layout import PARAMS_FILE

SHADOW_KEY = "shadow.enabled"
DROPOUT_KEY = "captions.augmentation.caption_dropout"
SEED_KEY = "train.seed"
EXPERIMENT_KEY = "train.experiment"
VALIDATION_COLUMN = "validation_loss"
REFERENCE_LABEL = "real reference"
DIRECTIONS = ("higher_is_better", "lower_is_better")


# ----------------------------------------------------------------------------- the matrix
@dataclass(frozen=True)
class Variant:
    """One job of the matrix: an arm (a shadow x caption-dropout setting) trained with one seed.

    Attributes:
        shadow (bool): train on the shadow-corrected image (params ``shadow.enabled``).
        caption_dropout (bool): drop caption descriptors as in the paper
            (``captions.augmentation.caption_dropout``).
        seed (int): the training seed (``train.seed``).
    """

    shadow: bool
    caption_dropout: bool
    seed: int = 0

    @property
    def arm(self) -> str:
        """The arm it replicates, e.g. ``shadow-on_dropout-off`` (MLflow tag ``mesa.arm``)."""
        return f"shadow-{on_off(self.shadow)}_dropout-{on_off(self.caption_dropout)}"

    @property
    def name(self) -> str:
        """The DVC experiment name and MLflow ``mesa.variant`` tag, e.g. ``shadow-on_dropout-off_seed-1``."""
        return f"{self.arm}_seed-{self.seed}"

    @property
    def levels(self) -> dict[str, bool]:
        """The arm's factor levels by factor name."""
        return {"shadow": self.shadow, "caption_dropout": self.caption_dropout}

    def overrides(self, experiment: str) -> dict[str, Any]:
        """The params this variant sets (dotted keys); training logs into the ablation's MLflow experiment."""
        return {SHADOW_KEY: self.shadow, DROPOUT_KEY: self.caption_dropout, SEED_KEY: self.seed,
                EXPERIMENT_KEY: experiment}

    def tags(self) -> dict[str, str]:
        """MLflow tags of its training run."""
        return {"mesa.variant": self.name, "mesa.arm": self.arm, "mesa.seed": str(self.seed),
                "mesa.shadow": on_off(self.shadow), "mesa.caption_dropout": on_off(self.caption_dropout)}


def on_off(value: bool) -> str:
    return "on" if value else "off"


def matrix(settings: dict[str, Any]) -> list[Variant]:
    """Every (shadow, caption_dropout, seed) of params.yaml ``ablation``: arms shadow-major, seeds within an arm.

    Args:
        settings (dict): the ``ablation`` group: ``shadow`` and ``caption_dropout`` (lists of
            booleans) and ``seeds`` (training seeds; default [0]).

    Raises:
        ValueError: when a factor is missing, empty, or holds something other than true / false, or
            the seeds are not distinct non-negative integers.
    """
    factors = {}
    for key in ("shadow", "caption_dropout"):
        values = settings.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, bool) for v in values):
            raise ValueError(f"params.yaml ablation.{key} must be a non-empty list of true/false, got {values!r}")
        factors[key] = list(dict.fromkeys(values))
    seeds = settings.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ValueError(f"params.yaml ablation.seeds must be a non-empty list of distinct integers >= 0, got {seeds!r}")
    return [Variant(s, d, seed) for s, d in itertools.product(factors["shadow"], factors["caption_dropout"])
            for seed in seeds]


# ----------------------------------------------------------------------------- params as DVC runs them
def set_param_args(overrides: dict[str, Any]) -> list[str]:
    """``dvc exp run`` arguments that set the dotted `overrides`: ``["-S", "shadow.enabled=false", ...]``.

    DVC parses each value with Hydra's override grammar: booleans are ``true`` / ``false``, and a
    string is single-quoted so that it stays a string whatever it holds ("no", "1e-4", spaces).
    """
    args = []
    for dotted, value in overrides.items():
        args += ["-S", f"{dotted}={override_value(value)}"]
    return args


def override_value(value: Any) -> str:
    """`value` in Hydra's override grammar (what ``dvc exp run -S KEY=VALUE`` reads).

    Raises:
        TypeError: for anything but None, bool, int, finite float and str.
        ValueError: for a string holding ``${``.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return repr(value)
    if isinstance(value, str):
        if "${" in value:
            raise ValueError(f"{value!r}: DVC's -S would resolve ${{...}} as an OmegaConf interpolation; "
                             "choose a value without it")
        # Hydra: \' is a quote; backslashes are literal except before a quote (or at the end).
        escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
        return f"'{escaped}'"
    raise TypeError(f"cannot pass {value!r} ({type(value).__name__}) to `dvc exp run -S`: use a bool, number or "
                    "string")


def missing_keys(params: dict[str, Any], overrides: dict[str, Any]) -> list[str]:
    """The dotted keys of `overrides` that params.yaml lacks (DVC's -S only changes existing keys)."""
    missing = []
    for dotted in overrides:
        node: Any = params
        for key in dotted.split("."):
            node = node.get(key, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is _ABSENT:
            missing.append(dotted)
    return missing


_ABSENT = object()


def expected_params(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """params.yaml as a variant runs it: the workspace's params with the dotted overrides set, in JSON form."""
    result = copy.deepcopy(params)
    for dotted, value in overrides.items():
        node = result
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return as_json(result)


def as_json(value: Any) -> Any:
    """`value` as it reads back from JSON (what `dvc exp show --json` gives: int keys become strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def experiments_of(shown: list[dict[str, Any]], baseline: str) -> dict[str, dict[str, Any]]:
    """The finished experiments of commit `baseline` in ``dvc exp show --json`` output.

    Returns:
        dict: experiment name -> {"rev", "params": params.yaml as the experiment ran it (JSON form)}.
        Failed, running and queued experiments are left out (DVC records no result for them).
    """
    found = {}
    for row in shown:
        if row.get("rev") != baseline:
            continue
        for experiment in row.get("experiments") or []:
            revs = experiment.get("revs") or []
            if not revs or experiment.get("executor") or revs[0].get("error"):
                continue
            data = revs[0].get("data") or {}
            params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data")
            found[experiment.get("name") or revs[0].get("name")] = {"rev": revs[0]["rev"], "params": as_json(params)}
    return found


def rerun_reason(known: dict[str, Any] | None, wanted: dict[str, Any], dirty: str, evaluated: bool) -> str | None:
    """Why a variant must run again, or None when DVC's experiment and its MLflow run can be reused.

    Args:
        known: its entry from :func:`experiments_of`, None when DVC has no experiment of that name.
        wanted: :func:`expected_params` of the variant.
        dirty: git_state's flag, "false" for a clean checkout (DVC bakes uncommitted changes in).
        evaluated: MLflow holds a finished, evaluated training run of it.
    """
    if known is None:
        return "DVC has no experiment of it"
    if dirty != "false":
        return "uncommitted changes"
    if known["params"] != wanted:
        return "its params differ"
    if not evaluated:
        return "MLflow has no evaluated run of it"
    return None


# ----------------------------------------------------------------------------- the table
def comparison_rows(entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One flat row per variant and the direction of every metric column.

    Args:
        entries: per variant {"variant", "shadow", "caption_dropout", "run_id", "metrics":
            metrics.json's ``metrics``, "validation_loss"}.

    Returns:
        (rows, directions): rows with the variant's factors, every metric value and the validation
        loss; directions map each metric column to higher_is_better / lower_is_better.
    """
    directions: dict[str, str] = {}
    for entry in entries:
        for name, metric in (entry.get("metrics") or {}).items():
            directions.setdefault(name, metric.get("direction", ""))
    directions[VALIDATION_COLUMN] = "lower_is_better"
    rows = []
    for entry in entries:
        row = {"variant": entry["variant"], "shadow_correction": on_off(entry["shadow"]),
               "caption_dropout": on_off(entry["caption_dropout"]), "seed": entry.get("seed", 0)}
        for name in directions:
            metric = (entry.get("metrics") or {}).get(name) or {}
            row[name] = entry.get("validation_loss") if name == VALIDATION_COLUMN else metric.get("value")
        row["run_id"] = entry.get("run_id")
        rows.append(row)
    return rows, directions


def real_reference(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Each metric's real reference (real held-out cells scored against the training cells), first found."""
    reference: dict[str, float] = {}
    for entry in entries:
        for name, metric in (entry.get("metrics") or {}).items():
            if metric.get("real_reference") is not None:
                reference.setdefault(name, metric["real_reference"])
    return reference


def shadow_grid_models(entries: list[dict[str, Any]]) -> dict[str, str] | None:
    """{variant: model URI} of the shadow-on and the shadow-off variant to draw side by side, or None.

    Both with caption dropout on when the matrix has it (the paper's setting), else both off, and
    the first training seed; None when either lacks an evaluated model.
    """
    dropout = any(entry["caption_dropout"] for entry in entries)
    first_seed = entries[0].get("seed", 0) if entries else 0
    pair = {e["shadow"]: e for e in entries
            if e["caption_dropout"] == dropout and e.get("seed", 0) == first_seed and e.get("model_uri")}
    if True not in pair or False not in pair:
        return None
    return {pair[shadow]["variant"]: pair[shadow]["model_uri"] for shadow in (True, False)}


def best_value(rows: list[dict[str, Any]], name: str, direction: str) -> float | None:
    """Column `name`'s best value; None when there is nothing to choose (fewer than two values, all equal)."""
    values = [r[name] for r in rows if _is_number(r.get(name))]
    if len(set(values)) < 2 or direction not in DIRECTIONS:
        return None
    return max(values) if direction == "higher_is_better" else min(values)


def markdown_table(rows: list[dict[str, Any]], directions: dict[str, str], reference: dict[str, Any],
                   header: dict[str, str], grid: str | None) -> str:
    """reports/ablation.md: one row per variant and one column per metric (its direction in the title, best in bold).

    Args:
        rows, directions: from :func:`comparison_rows`.
        reference: from :func:`real_reference`; drawn as a last, italic row (never bold) when not empty.
        header: bullet lines above the table (label -> text).
        grid: the shadow-correction grid's path relative to the report, or None for no grid section.
    """
    arrows = {"higher_is_better": "higher is better", "lower_is_better": "lower is better"}
    columns = ["variant", "shadow correction", "caption dropout", "seed"]
    columns += [f"{name} ({arrows.get(d, d or 'no direction')})" for name, d in directions.items()] + ["MLflow run"]
    lines = ["# Ablation: shadow correction x caption dropout", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    best = {name: best_value(rows, name, d) for name, d in directions.items()}
    for row in rows:
        cells = [row["variant"], row["shadow_correction"], row["caption_dropout"], str(row["seed"])]
        for name in directions:
            text = _cell(row.get(name))
            cells.append(f"**{text}**" if best[name] is not None and row.get(name) == best[name] else text)
        cells.append(f"`{row['run_id']}`" if row.get("run_id") else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    if reference:
        cells = [f"*{REFERENCE_LABEL}*", "", "", ""] + [_cell(reference.get(name)) for name in directions] + [""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", ("Bold: the best value of its column (none when all are equal). n/a: the metric could not be "
                   "computed for that model (e.g. too few held-out cells) or the variant has no evaluated MLflow run.")]
    if reference:
        lines += ["", (f"*{REFERENCE_LABEL.capitalize()}*: the same metrics for real held-out cells against the "
                       "training cells, i.e. what real data scores (n/a: no real counterpart).")]
    if grid:
        lines += ["", "## Shadow correction side by side (paper Table 4, same seed per row)", "",
                  f"![shadow correction grid]({grid})"]
    return "\n".join(lines) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if _is_number(value) else "n/a"
