"""components.majortom.ingest_options: `mesa data ingest` options laid over params data.ingest."""
from __future__ import annotations

import pytest

from components.majortom.ingest_options import ingest_settings

PARAMS = {"metadata": {"dem": "dem/metadata.parquet"}, "max_cells": 10,
          "filters": {"cloud_cover": [0.0, 50.0], "date_range": ["2020-01-01", None]}}


def test_given_options_replace_the_params_values_and_the_rest_stay():
    settings = ingest_settings(PARAMS, metadata=["s2l2a=https://h/s2l2a/metadata.parquet"], bbox="5,45,11,48",
                               date_to="2021-12-31", cloud_max=20.0, need_l1c=True, seed=7)
    assert settings["metadata"] == {"dem": "dem/metadata.parquet", "s2l2a": "https://h/s2l2a/metadata.parquet"}
    assert settings["filters"] == {"cloud_cover": [0.0, 20.0], "date_range": ["2020-01-01", "2021-12-31"],
                                   "bbox": [5.0, 45.0, 11.0, 48.0], "nodata": [0.0, 1.0]}
    assert (settings["need_l1c"], settings["seed"], settings["max_cells"]) == (True, 7, 10)
    assert PARAMS["filters"]["cloud_cover"] == [0.0, 50.0]  # params are not changed


def test_no_options_keep_the_params_and_fill_the_filter_defaults():
    assert ingest_settings({}) == {"filters": {"date_range": [None, None], "cloud_cover": [0.0, 100.0],
                                               "nodata": [0.0, 1.0]}}


@pytest.mark.parametrize("options, message", [
    ({"metadata": ["dem"]}, "--metadata 'dem': write SOURCE=PATH_OR_URL"),
    ({"bbox": "5,45,east,48"}, "--bbox '5,45,east,48': write min_lon,min_lat,max_lon,max_lat"),
])
def test_malformed_options_say_the_expected_form(options, message):
    with pytest.raises(ValueError, match=message):
        ingest_settings(PARAMS, **options)
