"""The model registry: register evaluated pipelines, gate promotions, move the ``champion`` alias.

Everything goes through an explicit `mlflow.MlflowClient` (e.g. ``mlflow_client(project)``
from `components.tracking.store`). The one exception: MLflow's database registry store resolves a
``models:/<model id>`` source through the global tracking URI, so registering a version sets it
to the client's URI for that call only (`components.tracking.pyfunc.using_tracking_uri`).

Versions carry their evaluation as tags, so a promotion decision needs nothing but the registry:

- ``metric.<name>`` = the value (absent when the evaluation had none),
- ``metric.<name>.direction`` = ``higher_is_better`` or ``lower_is_better``,
- ``mesa.run_id`` = the training run the version came from.

Aliases, not stages (MLflow 3): ``challenger`` names the version to judge, ``champion`` the one
served (``models:/<name>@champion``). A promotion records on the challenger version
``promotion.decision`` (promoted / rejected), ``promotion.reasons``, ``promotion.compared_with``
(the champion's version or "none") and ``promotion.at`` (UTC, ISO 8601); a promoted version also
gets ``previous_champion``, which `rollback` returns to.

Concurrency guarantee: an alias points at exactly one version at any time and moving it is a single
write, so readers always see one champion (never zero once one was set, never two). Two
promotions at once could still both read the same champion and both decide against it; given the
same ``lock_path`` (a file in the project, e.g. ``{project}/.mesa-registry.lock``), `promote`,
`rollback` and `register_pipeline` hold an exclusive ``fcntl.flock`` on it for the whole
read-decide-move sequence, so every decision is made against the champion that is current when it
is recorded. The lock covers processes on one machine sharing the file (threads too: each call
opens the file itself); it does not cover processes on other machines talking to the same server.
"""
from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from components.config import GateConfig
from components.locks import exclusive_lock

CHAMPION = "champion"
CHALLENGER = "challenger"
HIGHER = "higher_is_better"
LOWER = "lower_is_better"
DIRECTIONS = (HIGHER, LOWER)

METRIC_TAG_PREFIX = "metric."
DIRECTION_SUFFIX = ".direction"
RUN_ID_TAG = "mesa.run_id"
EVALUATION_TAG = "mesa.evaluation_fingerprint"  # which held-out set, settings and metric code
# The evaluation's caption grammar and DEM rule versions (also inside its fingerprint)
GRAMMAR_TAGS = {"caption_grammar": "mesa.caption_grammar", "dem_rule": "mesa.dem_rule"}
PREVIOUS_CHAMPION_TAG = "previous_champion"
DECISION_TAG = "promotion.decision"
REASONS_TAG = "promotion.reasons"
COMPARED_WITH_TAG = "promotion.compared_with"
DECIDED_AT_TAG = "promotion.at"
ROLLED_BACK_AT_TAG = "promotion.rolled_back_at"
# Set last, after the version got its challenger alias: a version without it was registered by a
# run killed before the alias, and the next registration of the same model completes it.
REGISTRATION_TAG = "mesa.registration"
REGISTRATION_COMPLETE = "complete"

TAG_VALUE_MAX = 5000  # MLflow's limit for a model version tag value
# A relative change needs a non-zero reference; below this a champion value counts as zero.
_ZERO = 1e-12
_MODEL_ID_URI = re.compile(r"^models:/(m-[0-9a-f]+)$")


# ----------------------------------------------------------------------------- locking
@contextlib.contextmanager
def registry_lock(lock_path: str | Path | None) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` inside a ``with`` block (waits for it as long as it takes).

    Args:
        lock_path (str | Path | None): the lock file (created when missing, with its folder);
            None takes no lock.
    """
    if lock_path is None:
        yield
        return
    with exclusive_lock(lock_path, purpose="a registry change"):
        yield


# ----------------------------------------------------------------------------- metric tags
def metric_tags(metrics_report: Mapping | None) -> dict[str, str]:
    """Version tags for the metrics of an evaluate report.

    Args:
        metrics_report (Mapping | None): ``reports/metrics.json`` as written by
            `components.evaluation.evaluate.metrics_report` (``{"metrics": {name: {"direction",
            "value", ...}}}``); None gives no tags.

    Returns:
        dict[str, str]: ``metric.<name>`` (only when the value is not None) and
        ``metric.<name>.direction`` for each metric, and ``mesa.evaluation_fingerprint`` when the
        report has one (two versions' metrics are comparable only when it is the same).

    Raises:
        ValueError: when a metric has no valid direction or a value that is not a number.
    """
    if metrics_report is None:
        return {}
    metrics = metrics_report.get("metrics")
    if not isinstance(metrics, Mapping):
        raise ValueError("the metrics report has no 'metrics' mapping: give the dict the evaluate stage "
                         "writes to reports/metrics.json")
    tags = {}
    for name, entry in metrics.items():
        direction = _direction_of(name, entry)
        tags[f"{METRIC_TAG_PREFIX}{name}{DIRECTION_SUFFIX}"] = direction
        value = _value_of(name, entry)
        if value is not None:
            tags[f"{METRIC_TAG_PREFIX}{name}"] = repr(value)
    if metrics_report.get("evaluation_fingerprint"):
        tags[EVALUATION_TAG] = str(metrics_report["evaluation_fingerprint"])
    for key, tag in GRAMMAR_TAGS.items():
        if metrics_report.get(key) is not None:
            tags[tag] = str(metrics_report[key])
    return tags


def retag_evaluation(client: Any, name: str, version: int | str, metrics_report: Mapping) -> None:
    """Replace a version's metric tags with a new evaluation's (e.g. after re-evaluating the champion).

    Args:
        client (mlflow.MlflowClient): the client.
        name (str): the registered model.
        version (int | str): the version.
        metrics_report (Mapping): the new evaluate report.
    """
    new = metric_tags(metrics_report)
    old = client.get_model_version(name, str(version)).tags or {}
    for key in old:
        if (key.startswith(METRIC_TAG_PREFIX) or key in (EVALUATION_TAG, *GRAMMAR_TAGS.values())) and key not in new:
            client.delete_model_version_tag(name, str(version), key)
    for key, value in new.items():
        client.set_model_version_tag(name, str(version), key, value)


def metrics_from_tags(tags: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The metrics a version's tags hold, in the shape `decide` takes.

    Args:
        tags (Mapping[str, str]): a model version's tags.

    Returns:
        dict[str, dict[str, Any]]: name -> ``{"direction": str, "value": float | None}``; a metric
        with a direction tag but no value tag has value None.
    """
    metrics: dict[str, dict[str, Any]] = {}
    for key, text in tags.items():
        if not key.startswith(METRIC_TAG_PREFIX):
            continue
        name = key[len(METRIC_TAG_PREFIX):]
        if name.endswith(DIRECTION_SUFFIX):
            metrics.setdefault(name[: -len(DIRECTION_SUFFIX)], {"value": None})["direction"] = text
        else:
            metrics.setdefault(name, {"value": None})["value"] = float(text)
    return metrics


def _direction_of(name: str, entry: Mapping) -> str:
    direction = entry.get("direction") if isinstance(entry, Mapping) else None
    if direction not in DIRECTIONS:
        raise ValueError(f"metric {name!r} has direction {direction!r}; it must be one of {DIRECTIONS}")
    return direction


def _value_of(name: str, entry: Mapping) -> float | None:
    """The metric's value as a float, None when absent, NaN or infinite."""
    value = entry.get("value") if isinstance(entry, Mapping) else None
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"metric {name!r} has value {value!r}, which is not a number") from err
    return number if math.isfinite(number) else None


# ----------------------------------------------------------------------------- registering
def register_pipeline(
    client: Any,
    name: str,
    run_id: str,
    model_uri: str,
    metrics_report: Mapping | None = None,
    *,
    lock_path: str | Path | None = None,
) -> Any:
    """Register a logged pipeline model as a new version of `name`, once per logged model.

    Idempotent: when a version of `name` already holds `model_uri` (for a ``models:/<model id>``
    URI, the same logged model; for another source, the same run), that version is returned and
    nothing is written. A resumed training run that logs a new model gets a new version.

    Args:
        client (mlflow.MlflowClient): a client for the tracking URI in use.
        name (str): the registered model (created when missing).
        run_id (str): the training run the model was logged from.
        model_uri (str): the logged model, as `log_pipeline_model` returns it (``models:/<model id>``).
        metrics_report (Mapping | None, default None): the evaluate report; its metrics become
            version tags (see the module docstring).
        lock_path (str | Path | None, default None): a lock file making the check-then-register
            safe against a concurrent registration of the same run; None takes no lock.

    Returns:
        mlflow.entities.model_registry.ModelVersion: the new (or existing) version.
    """
    tags = {**metric_tags(metrics_report), RUN_ID_TAG: run_id}  # validated before anything is written
    with registry_lock(lock_path):
        _ensure_registered_model(client, name)
        existing = find_version_for_model(client, name, run_id, model_uri)
        if existing is not None:
            return existing
        return _create_version(client, name, run_id, model_uri, tags)


def _create_version(client: Any, name: str, run_id: str, model_uri: str, tags: dict[str, str]) -> Any:
    """One new version of `name` from `model_uri` (a ``models:/<model id>`` URI or a plain source)."""
    from components.tracking.pyfunc import using_tracking_uri

    match = _MODEL_ID_URI.match(model_uri)
    # MLflow's database registry store resolves ``models:/<model id>`` with a client on the
    # *global* tracking URI, whatever client called it: point that at this client's store.
    with using_tracking_uri(client.tracking_uri):
        return client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags,
                                           model_id=match.group(1) if match else None)


def find_version_for_model(client: Any, name: str, run_id: str, model_uri: str) -> Any | None:
    """The version of `name` that already holds `model_uri`, or None.

    A ``models:/<model id>`` URI is matched by the logged model's id; any other source by the run
    it came from (`find_version_for_run`).
    """
    match = _MODEL_ID_URI.match(model_uri)
    if not match:
        return find_version_for_run(client, name, run_id)
    # The version's source is the URI it was created from (MLflow 3.17 leaves model_id empty).
    found = [v for v in all_versions(client, name)
             if v.source == model_uri or getattr(v, "model_id", None) == match.group(1)]
    return min(found, key=lambda v: int(v.version)) if found else None


def find_version_for_run(client: Any, name: str, run_id: str) -> Any | None:
    """The lowest version of `name` registered from `run_id`, or None.

    Args:
        client (mlflow.MlflowClient): the client.
        name (str): the registered model.
        run_id (str): the training run.
    """
    matches = [v for v in all_versions(client, name)
               if v.run_id == run_id or (v.tags or {}).get(RUN_ID_TAG) == run_id]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def all_versions(client: Any, name: str) -> list[Any]:
    """Every version of `name` (all result pages).

    Args:
        client (mlflow.MlflowClient): the client.
        name (str): the registered model.
    """
    if "'" in name:
        raise ValueError(f"registered model name {name!r} contains a single quote; choose a name without one")
    versions, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        # Already there (or created a moment ago by another process): both are fine.
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def registration_complete(version: Any) -> bool:
    """Whether `version` finished registering (challenger alias set), or was judged or aliased before
    completion was recorded (versions registered by older code)."""
    tags = version.tags or {}
    return (tags.get(REGISTRATION_TAG) == REGISTRATION_COMPLETE or DECISION_TAG in tags
            or bool(getattr(version, "aliases", None)))


def complete_registration(client: Any, name: str, version: int | str) -> None:
    """Make `version` the challenger, then mark its registration complete (in that order: a kill in
    between leaves it incomplete, and the next call completes it)."""
    set_alias(client, name, CHALLENGER, version)
    client.set_model_version_tag(name, str(version), REGISTRATION_TAG, REGISTRATION_COMPLETE)


# ----------------------------------------------------------------------------- aliases
def set_alias(client: Any, name: str, alias: str, version: int | str) -> None:
    """Point `alias` of registered model `name` at `version` (moving it if it pointed elsewhere).

    Args:
        client (mlflow.MlflowClient): the client.
        name (str): the registered model.
        alias (str): e.g. ``"challenger"``.
        version (int | str): the version number.
    """
    client.set_registered_model_alias(name, alias, str(version))


def get_alias_version(client: Any, name: str, alias: str) -> Any | None:
    """The version `alias` points at, or None when the alias (or the model) does not exist.

    Args:
        client (mlflow.MlflowClient): the client.
        name (str): the registered model.
        alias (str): e.g. ``"champion"``.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        # A missing alias is INVALID_PARAMETER_VALUE, a missing model RESOURCE_DOES_NOT_EXIST.
        if err.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise


# ----------------------------------------------------------------------------- the gate
@dataclass(frozen=True)
class PromotionGate:
    """What a challenger must meet to become champion.

    Attributes:
        max_regression (float, default 0.0): no metric may be worse than the champion's by more
            than this fraction of the champion's value, in the metric's direction (0.05 = 5 %).
        floors (Mapping[str, float], default {}): absolute minimums for higher-is-better metrics.
        ceilings (Mapping[str, float], default {}): absolute maximums for lower-is-better metrics.
        metrics (tuple[str, ...] | None, default None): the metrics compared with the champion's
            (None: all); floors and ceilings apply whatever this lists.
        margins (Mapping[str, float], default {}): absolute non-inferiority margins (see
            components.evaluation.noninferiority); used when both versions have per-cell tables.
        spread_multiple (float, default 2.5): margin = this x the measured seed-to-seed SD + the seed
            pairs' typical paired half-width.
        confidence (float, default 0.95): the paired interval's level.
    """

    max_regression: float = 0.0
    floors: Mapping[str, float] = field(default_factory=dict)
    ceilings: Mapping[str, float] = field(default_factory=dict)
    metrics: tuple[str, ...] | None = None
    margins: Mapping[str, float] = field(default_factory=dict)
    spread_multiple: float = 2.5
    confidence: float = 0.95

    @classmethod
    def from_config(cls, config: GateConfig) -> PromotionGate:
        """The gate params.yaml ``registry.gate`` describes (checked by ``GateConfig``)."""
        return cls(max_regression=config.max_regression, floors=dict(config.floors), ceilings=dict(config.ceilings),
                   metrics=None if config.metrics is None else tuple(config.metrics), margins=dict(config.margins),
                   spread_multiple=config.spread_multiple, confidence=config.confidence)

    @classmethod
    def from_params(cls, mapping: Mapping[str, Any] | None) -> PromotionGate:
        """A gate from a params section such as ``{"max_regression": 0.05, "floors": {...}}``.

        Args:
            mapping (Mapping[str, Any] | None): keys max_regression, floors, ceilings, metrics (each
                optional); None gives the default gate.

        Raises:
            ParamsError: an unknown key (a typo would otherwise silently disable a check) or an
                invalid value, named as ``registry.gate.KEY``.
        """
        return cls.from_config(GateConfig.from_params(mapping))


@dataclass
class Decision:
    """The outcome of judging a challenger.

    Attributes:
        promote (bool): whether the challenger passes the gate.
        reasons (list[str]): one line per failed check, naming the metric and both numbers; lines
            starting with "skipped" note checks that could not be made (they do not fail).
        compared (dict): per metric ``{"direction", "challenger", "champion", "worse_by"}``
            (champion and worse_by are None without a champion value; worse_by is the relative
            worsening, negative when the challenger is better).
    """

    promote: bool
    reasons: list[str] = field(default_factory=list)
    compared: dict = field(default_factory=dict)


def decide(gate: PromotionGate, challenger_metrics: Mapping[str, dict],
           champion_metrics: Mapping[str, dict] | None, checks: Mapping[str, Any] | None = None) -> Decision:
    """Judge a challenger's metrics against the gate and the champion's (pure function).

    Every challenger metric with a value is checked against its floor or ceiling; when there is a
    champion, the metrics `gate.metrics` names (all when None) also against the champion's: by
    their paired non-inferiority check when `checks` has one (the interval's worse end within the
    margin), else by the relative `gate.max_regression` on the two values. Without a champion
    (the first model) only floors and ceilings apply. A metric whose value is None (or whose
    champion value is None) is skipped with a note in `reasons`; so is a floor or ceiling for a
    metric the challenger does not have.

    Args:
        gate (PromotionGate): the thresholds.
        challenger_metrics (Mapping[str, dict]): name -> ``{"direction", "value"}`` (the evaluate
            report's ``metrics`` or `metrics_from_tags` of a version).
        champion_metrics (Mapping[str, dict] | None): the same for the champion; None when there
            is no champion.
        checks (Mapping[str, noninferiority.Check] | None, default None): per metric, the paired
            comparison of both versions' per-cell evaluations.

    Returns:
        Decision: promote is True when no check failed.

    Raises:
        ValueError: on a metric without a valid direction, a floor on a lower-is-better metric or
            a ceiling on a higher-is-better one.
    """
    failures, notes, compared = [], [], {}
    for name, entry in challenger_metrics.items():
        direction, value = _direction_of(name, entry), _value_of(name, entry)
        _check_limit_direction(gate, name, direction)
        if value is None:
            notes.append(f"skipped {name}: the challenger has no value")
            continue
        failures.extend(_limit_failures(gate, name, value))
        gated = gate.metrics is None or name in gate.metrics
        paired = (checks or {}).get(name) if gated and champion_metrics is not None else None
        if paired is None:
            compared[name] = _compare_with_champion(gate, name, direction, value,
                                                    champion_metrics if gated else None, failures, notes)
            continue
        # worse_by here is absolute (in the metric's units), with its interval and margin
        compared[name] = {"challenger": value, "champion": _value_of(name, champion_metrics.get(name) or {}),
                          **paired.to_dict()}
        (notes if paired.passed else failures).append(("passed: " if paired.passed else "") + paired.reason())
    for name in sorted((set(gate.floors) | set(gate.ceilings) | set(gate.metrics or ())) - set(challenger_metrics)):
        notes.append(f"skipped {name}: the gate names it but the challenger has no such metric")
    return Decision(promote=not failures, reasons=failures + notes, compared=compared)


def _check_limit_direction(gate: PromotionGate, name: str, direction: str) -> None:
    if name in gate.floors and direction != HIGHER:
        raise ValueError(f"floors.{name} is set but {name} is {direction}: give it a ceiling instead")
    if name in gate.ceilings and direction != LOWER:
        raise ValueError(f"ceilings.{name} is set but {name} is {direction}: give it a floor instead")


def _limit_failures(gate: PromotionGate, name: str, value: float) -> list[str]:
    """Failure lines for `value` against the floor and ceiling of `name` (empty when it passes)."""
    failures = []
    if name in gate.floors and value < gate.floors[name]:
        failures.append(f"{name} = {value:.6g} is below the floor {gate.floors[name]:.6g}")
    if name in gate.ceilings and value > gate.ceilings[name]:
        failures.append(f"{name} = {value:.6g} is above the ceiling {gate.ceilings[name]:.6g}")
    return failures


def _compare_with_champion(gate: PromotionGate, name: str, direction: str, value: float,
                           champion_metrics: Mapping[str, dict] | None,
                           failures: list[str], notes: list[str]) -> dict[str, Any]:
    """The `compared` entry for one metric; appends a failure when it regressed too far."""
    entry = {"direction": direction, "challenger": value, "champion": None, "worse_by": None}
    if champion_metrics is None:
        return entry
    champion_value = _value_of(name, champion_metrics.get(name) or {})
    if champion_value is None:
        notes.append(f"skipped {name} against the champion: the champion has no value")
        return entry
    worse_by = relative_worsening(direction, value, champion_value)
    entry.update(champion=champion_value, worse_by=worse_by)
    if worse_by > gate.max_regression:
        failures.append(f"{name} = {value:.6g} is worse than the champion's {champion_value:.6g} by "
                        f"{worse_by:.2%} ({direction}; max_regression {gate.max_regression:.2%})")
    return entry


def relative_worsening(direction: str, challenger: float, champion: float) -> float:
    """How much worse `challenger` is than `champion`, as a fraction of the champion's magnitude.

    Args:
        direction (str): ``higher_is_better`` or ``lower_is_better``.
        challenger (float): the challenger's value.
        champion (float): the champion's value.

    Returns:
        float: positive when worse, negative when better; against a champion value of zero any
        worsening is infinite (a relative tolerance of zero has nothing to scale).
    """
    worse = champion - challenger if direction == HIGHER else challenger - champion
    if abs(champion) < _ZERO:
        return math.inf if worse > 0 else (-math.inf if worse < 0 else 0.0)
    return worse / abs(champion)


# ----------------------------------------------------------------------------- promotion
def promote(client: Any, name: str, gate: PromotionGate, challenger_version: int | str | None = None,
            *, lock_path: str | Path | None = None,
            compare: Callable[[Any, Any], Mapping[str, Any]] | None = None,
            blockers: Sequence[str] = (), dry_run: bool = False,
            extra_tags: Mapping[str, str] | None = None) -> Decision:
    """Judge the challenger against the champion and, when it passes, make it the champion.

    The decision is recorded as tags on the challenger version (see the module docstring). When
    it passes, the old champion's version is written as ``previous_champion`` on the challenger
    before the ``champion`` alias moves, so a champion always knows where `rollback` goes.
    Promoting the version that already is champion changes nothing and says so (promote True).

    Args:
        client (mlflow.MlflowClient): the client.
        name (str): the registered model.
        gate (PromotionGate): the thresholds.
        challenger_version (int | str | None, default None): the version to judge; None takes the
            version the ``challenger`` alias points at.
        lock_path (str | Path | None, default None): serialises read-decide-move with other
            promotions and rollbacks using the same file (see the module docstring); None takes
            no lock.
        compare (Callable | None, default None): (challenger version, champion version) -> per
            metric ``noninferiority.Check`` from their per-cell evaluations, called under the lock
            with the champion current at that moment; None (or an empty answer) keeps the
            relative check on the tagged values.
        blockers (Sequence[str], default ()): reasons the challenger may not be promoted whatever
            its metrics (e.g. lineage that cannot be reproduced); each becomes a failure.
        dry_run (bool, default False): decide only: no tag is written and no alias moves (what a
            reviewer is shown before approving).
        extra_tags (Mapping[str, str] | None, default None): more tags for the judged version
            with the decision (e.g. who approved it).

    Returns:
        Decision: what was decided and why.

    Raises:
        LookupError: when there is no challenger to judge.
    """
    with registry_lock(lock_path):
        challenger = _resolve_challenger(client, name, challenger_version)
        champion = get_alias_version(client, name, CHAMPION)
        if champion is not None and champion.version == challenger.version:
            return Decision(promote=True, reasons=[f"version {challenger.version} of {name!r} already is "
                                                   f"the champion: nothing changed"])
        checks = compare(challenger, champion) if compare is not None and champion is not None else None
        decision = decide(gate, metrics_from_tags(challenger.tags or {}),
                          None if champion is None else metrics_from_tags(champion.tags or {}), checks)
        if blockers:
            decision = Decision(promote=False, reasons=[*blockers, *decision.reasons], compared=decision.compared)
        if dry_run:
            return decision
        _record_decision(client, name, challenger.version, decision, champion)
        for key, value in (extra_tags or {}).items():
            client.set_model_version_tag(name, challenger.version, key, truncate_tag(str(value)))
        if decision.promote:
            _crown(client, name, challenger.version, champion)
        return decision


def _resolve_challenger(client: Any, name: str, version: int | str | None) -> Any:
    """The version to judge: `version` when given, else the one the ``challenger`` alias names."""
    if version is not None:
        return client.get_model_version(name, str(version))
    challenger = get_alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise LookupError(f"registered model {name!r} has no {CHALLENGER!r} alias: set it with "
                          f"set_alias(client, {name!r}, {CHALLENGER!r}, version) or pass challenger_version")
    return challenger


def _record_decision(client: Any, name: str, version: int | str, decision: Decision, champion: Any | None) -> None:
    """Write the promotion.* tags on the judged version."""
    tags = {
        DECISION_TAG: "promoted" if decision.promote else "rejected",
        REASONS_TAG: truncate_tag("; ".join(decision.reasons) or "all checks passed"),
        COMPARED_WITH_TAG: "none" if champion is None else str(champion.version),
        DECIDED_AT_TAG: _utc_now(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _crown(client: Any, name: str, version: int | str, champion: Any | None) -> None:
    """Make `version` the champion, remembering the old one for `rollback`."""
    if champion is not None:
        client.set_model_version_tag(name, version, PREVIOUS_CHAMPION_TAG, str(champion.version))
    elif PREVIOUS_CHAMPION_TAG in (client.get_model_version(name, version).tags or {}):
        # Left from an earlier reign: with no champion now there is nothing to roll back to.
        client.delete_model_version_tag(name, version, PREVIOUS_CHAMPION_TAG)
    set_alias(client, name, CHAMPION, version)


def rollback(client: Any, name: str, *, lock_path: str | Path | None = None) -> int:
    """Move ``champion`` back to the version the current champion replaced.

    Args:
        client (mlflow.MlflowClient): the client.
        name (str): the registered model.
        lock_path (str | Path | None, default None): the same lock file `promote` uses; None takes
            no lock.

    Returns:
        int: the version that is champion now.

    Raises:
        LookupError: when there is no champion, it has no ``previous_champion`` tag, or that
            version no longer exists.
    """
    from mlflow.exceptions import MlflowException

    with registry_lock(lock_path):
        champion = get_alias_version(client, name, CHAMPION)
        if champion is None:
            raise LookupError(f"registered model {name!r} has no {CHAMPION!r} alias, so there is nothing to "
                              "roll back; promote a version first")
        previous = (champion.tags or {}).get(PREVIOUS_CHAMPION_TAG)
        if not previous:
            raise LookupError(f"champion version {champion.version} of {name!r} has no {PREVIOUS_CHAMPION_TAG!r} "
                              f"tag (it was the first champion, or was rolled back to); set the alias by hand "
                              f"with set_alias(client, {name!r}, {CHAMPION!r}, version)")
        try:
            client.get_model_version(name, previous)
        except MlflowException as err:
            raise LookupError(f"previous champion version {previous} of {name!r} no longer exists ({err}); "
                              f"set the alias by hand with set_alias") from err
        set_alias(client, name, CHAMPION, previous)
        client.set_model_version_tag(name, champion.version, ROLLED_BACK_AT_TAG, _utc_now())
        return int(previous)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def truncate_tag(value: str, limit: int = TAG_VALUE_MAX) -> str:
    """`value` cut to fit a model version tag (MLflow's limit), ending in "..." when cut."""
    return value if len(value) <= limit else value[: limit - 3] + "..."
