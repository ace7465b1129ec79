"""params.yaml ``validate``: the data contracts' settings and the paper's filters as named rules.

A rule set to null (or left out) is off; a rule's thresholds left out take the defaults of
components.curation.filters.DEFAULT_FILTERS (the stage hands this mapping over as written).
"""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field

from components.config.base import Count, NonNegativeFloat, ParamsModel, Probability, fixed_tuple


class OceanRule(ParamsModel):
    max_relief_m: NonNegativeFloat = 2.0


class AntarcticaRule(ParamsModel):
    max_lat: float = Field(-60.0, ge=-90.0, le=90.0)


class NodataRule(ParamsModel):
    max_nodata_fraction: Probability = 0.5
    min_dem_finite_fraction: Probability = 0.95


class ValidAreaRule(ParamsModel):
    min_valid_fraction: Probability = 0.3


class DateGapRule(ParamsModel):
    max_days: NonNegativeFloat = 3.0


class FilterRules(ParamsModel):
    """``validate.filters``: rule name -> thresholds (null or left out: the rule is off)."""

    ocean_or_flat_water: Optional[OceanRule] = None
    antarctica: Optional[AntarcticaRule] = None
    too_much_nodata: Optional[NodataRule] = None
    too_little_valid_area: Optional[ValidAreaRule] = None
    date_gap: Optional[DateGapRule] = None


class ContractSettings(ParamsModel):
    """``validate.contract``: the data contracts' settings (components.curation.contracts.suites.DEFAULT_CONTRACT_PARAMS
    documents each; a key left out keeps that default)."""

    s2_era_start: str = "2015-06-23"
    s2_era_end: Optional[str] = None
    centre_tolerance_m: NonNegativeFloat = 50.0
    max_zone_offset: int = Field(1, ge=0)
    equator_margin_deg: NonNegativeFloat = 0.1
    max_date_gap_days: NonNegativeFloat = 3.0
    dem_range_m: fixed_tuple(float, float) = (-500.0, 9000.0)
    image_px: Count = 1068
    dem_px: Count = 356


class ValidateConfig(ParamsModel):
    """params.yaml ``validate``.

    Attributes:
        cloud_classes: cloud_mask codes counted as cloud or cloud shadow (0..255).
        filters: ``FilterRules``.
        contract: ``ContractSettings`` (optional; absent: the contracts' defaults).
        workers: shards measured at the same time (int >= 1, default 1).
    """

    GROUP = "validate"

    cloud_classes: list[Annotated[int, Field(ge=0, le=255)]] = Field(min_length=1)
    filters: FilterRules
    contract: Optional[ContractSettings] = None
    workers: Count = 1
