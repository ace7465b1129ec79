"""The groups that change where and when the pipeline runs, not what it computes: ``runner``,
``registry``, ``versioning``, ``deploy``, ``ablation`` (not DVC params of any stage)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, StrictBool, field_validator

from components.config.base import Count, NonBlank, NonNegativeFloat, NonNegativeInt, ParamsModel, shadowing


class RunnerConfig(ParamsModel):
    """params.yaml ``runner``: where per-shard work runs.

    Attributes:
        kind: ``threads`` (each stage's ``workers`` in its process) or ``dask`` (prefect-dask).
        dask_address: an existing cluster (kind dask); None: a local cluster.
        dask_workers: worker processes of the local cluster (default 2).
    """

    GROUP = "runner"

    kind: Literal["threads", "dask"] = "threads"
    dask_address: Optional[NonBlank] = None
    dask_workers: Count = 2


class GateConfig(ParamsModel):
    """``registry.gate``: what a challenger must meet (components.tracking.registry.PromotionGate).

    Attributes:
        max_regression: no gated metric may be worse than the champion's by more than this
            fraction (0.1 = 10 %; default 0).
        metrics: the metrics compared with the champion's (None: all).
        floors: absolute minimums of higher-is-better metrics.
        ceilings: absolute maximums of lower-is-better metrics.
        margins: absolute non-inferiority margins per metric (components.evaluation.noninferiority);
            a metric without one takes spread_multiple x its measured seed-to-seed SD (+ the seed
            pairs' interval half-width), else max_regression x the champion's value.
        spread_multiple: the margin in seed-to-seed standard deviations, plus the seed pairs' typical
            interval half-width (default 2.5: a seed-only retrain passes about 95 % of the time).
        confidence: the level of the paired interval (default 0.95).
        require_approval: a challenger that passes waits for a reviewer (Prefect UI, or
            ``mesa promote --approve N``) before ``champion`` moves.
        approval_timeout_h: how long the promote step waits for that review (then it fails and
            nothing moves).
    """

    GROUP = "registry.gate"

    max_regression: NonNegativeFloat = 0.0
    metrics: Optional[list[NonBlank]] = None
    floors: dict[str, float] = Field(default_factory=dict)
    ceilings: dict[str, float] = Field(default_factory=dict)
    margins: dict[str, float] = Field(default_factory=dict)
    spread_multiple: NonNegativeFloat = 2.5
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    require_approval: StrictBool = False
    approval_timeout_h: float = Field(default=24.0, gt=0.0, le=24.0 * 30)

    @field_validator("floors", "ceilings", "margins", mode="before")
    @classmethod
    def _null_is_none(cls, value):
        return {} if value is None else value

    @field_validator("floors", "ceilings", "margins")
    @classmethod
    def _finite(cls, value):
        bad = {metric: limit for metric, limit in value.items() if limit != limit or abs(limit) == float("inf")}
        if bad:
            raise ValueError(f"limits must be finite numbers, got {bad}")
        return value

    @field_validator("margins")
    @classmethod
    def _non_negative(cls, value):
        bad = {metric: margin for metric, margin in value.items() if margin < 0}
        if bad:
            raise ValueError(f"margins must be >= 0 (how much worse is still the same model), got {bad}")
        return value


# `register` is also ABCMeta.register (pydantic models are ABCs): the key keeps its name.
with shadowing("register"):
    class RegistryConfig(ParamsModel):
        """params.yaml ``registry``: the MLflow registered model, and what retrain does with it."""

        GROUP = "registry"

        model_name: NonBlank = "mesa"
        register: bool = True
        promote: bool = True
        gate: GateConfig = Field(default_factory=GateConfig)


class VersioningConfig(ParamsModel):
    """params.yaml ``versioning``: ``push`` every DVC output to ``remote`` (None: the default one)."""

    GROUP = "versioning"

    push: bool = False
    remote: Optional[NonBlank] = None


class DeployConfig(ParamsModel):
    """params.yaml ``deploy``: Prefect deployments (only retrain is scheduled).

    Attributes:
        retrain_cron: five (or six) cron fields, e.g. "0 3 * * 1"; None: on demand only.
        timezone: of the cron (None: UTC).
        work_pool: the Prefect work pool (None: mesa-process).
    """

    GROUP = "deploy"

    retrain_cron: Optional[str] = None
    timezone: Optional[str] = "UTC"
    work_pool: Optional[str] = "mesa-process"

    @field_validator("retrain_cron")
    @classmethod
    def _cron_fields(cls, value):
        if value is not None and len(value.split()) not in (5, 6):
            raise ValueError("must be a cron expression: five fields (minute hour day-of-month month day-of-week), "
                             "e.g. \"0 3 * * 1\" for Mondays 03:00, or null for no schedule")
        return value


class AblationConfig(ParamsModel):
    """params.yaml ``ablation``: shadow correction x caption dropout, each a non-empty list of true/false.

    Attributes:
        seeds: training seeds per variant (``train.seed``); two or more give intervals.
        parallel: variant x seed jobs run at once (one per GPU where there are GPUs).
        threads_per_job: CPU threads each job's processes use (None: the machine's cores / parallel);
            the same number gives the same results whether the jobs run in parallel or one by one.
        work_pool: run each job as a flow run of the ablation-variant deployment on this Prefect
            work pool (its workers, on any machines, run them); None: on this machine.
    """

    GROUP = "ablation"

    shadow: list[StrictBool] = Field(min_length=1)
    caption_dropout: list[StrictBool] = Field(min_length=1)
    seeds: list[NonNegativeInt] = Field(default_factory=lambda: [0], min_length=1)
    parallel: Count = 1
    threads_per_job: Optional[Count] = None
    work_pool: Optional[NonBlank] = None
    experiment: Optional[str] = "mesa-ablation"

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value):
        if len(set(value)) != len(value):
            raise ValueError(f"training seeds must differ (a repeated seed trains the same model twice), got {value}")
        return value
