"""params.yaml ``synth``: the synthetic Major TOM world."""
from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field, field_validator

from components.config.base import Count, ParamsModel, Probability, fixed_tuple

# The landform classes the world can draw (components.captions.landform.LANDFORM_CLASSES, in order).
Landform = Literal["plains", "tablelands", "hills", "low mountains", "high mountains"]
LANDFORMS: tuple[str, ...] = ("plains", "tablelands", "hills", "low mountains", "high mountains")


class SynthConfig(ParamsModel):
    """Parameters of the synthetic world (params.yaml group ``synth``).

    Attributes:
        seed: seeds every draw of the world (int, default 42).
        cells: good cells; broken rows come on top (int >= 1, default 256).
        cells_per_shard: cells per shard (int >= 1, default 32).
        landforms: classes dealt out round robin (default all five).
        broken_rows: add one cell of each kind validation must catch (bool, default True).
        cloudy_share, max_cloud_cover, nodata_border_share: fractions in [0, 1].
        date_range: [first, last] acquisition dates, ISO strings.
        workers: shards built in parallel (int >= 1, default 2).
    """

    GROUP = "synth"

    seed: int = 42
    cells: Count = Field(256, description="good cells; broken rows come on top")
    cells_per_shard: Count = 32
    landforms: list[Landform] = Field(default_factory=lambda: list(LANDFORMS), min_length=1)
    broken_rows: bool = True
    cloudy_share: Probability = 0.3
    max_cloud_cover: Probability = 0.4
    nodata_border_share: Probability = 0.15
    date_range: fixed_tuple(str, str) = ("2017-03-01", "2024-10-31")
    workers: Count = 2

    @field_validator("date_range")
    @classmethod
    def _ordered_iso_dates(cls, value):
        try:
            first, last = (date.fromisoformat(d) for d in value)
        except ValueError:
            raise ValueError(f"{list(value)} must be two ISO dates (YYYY-MM-DD), quoted") from None
        if first > last:
            raise ValueError(f"{list(value)} must be [first, last] with first <= last")
        return value
