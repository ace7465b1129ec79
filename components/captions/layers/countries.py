"""Countries: Natural Earth 1:10m admin-0, as shipped inside the geo-intel-offline wheel."""
from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from components.captions.layers.base import dist_version, package_dir, valid_polygons
from components.captions.layers.polygons import PolygonIndex, PolygonLayer

#: Natural Earth's NAME field abbreviates some names ("Dem. Rep. Congo"); these are the
#: long forms (Natural Earth NAME_LONG / ADMIN style) used for captions.
NE_NAME_EXPANSIONS: dict[str, str] = {
    "Antigua and Barb.": "Antigua and Barbuda",
    "Ashmore and Cartier Is.": "Ashmore and Cartier Islands",
    "Bosnia and Herz.": "Bosnia and Herzegovina",
    "Br. Indian Ocean Ter.": "British Indian Ocean Territory",
    "Brazilian I.": "Brazilian Island",
    "British Virgin Is.": "British Virgin Islands",
    "Cayman Is.": "Cayman Islands",
    "Central African Rep.": "Central African Republic",
    "Clipperton I.": "Clipperton Island",
    "Cook Is.": "Cook Islands",
    "Coral Sea Is.": "Coral Sea Islands",
    "Dem. Rep. Congo": "Democratic Republic of the Congo",
    "Dominican Rep.": "Dominican Republic",
    "Eq. Guinea": "Equatorial Guinea",
    "Faeroe Is.": "Faroe Islands",
    "Falkland Is.": "Falkland Islands",
    "Fr. Polynesia": "French Polynesia",
    "Fr. S. Antarctic Lands": "French Southern and Antarctic Lands",
    "Heard I. and McDonald Is.": "Heard Island and McDonald Islands",
    "Indian Ocean Ter.": "Australian Indian Ocean Territories",
    "Marshall Is.": "Marshall Islands",
    "N. Cyprus": "Northern Cyprus",
    "N. Mariana Is.": "Northern Mariana Islands",
    "Pitcairn Is.": "Pitcairn Islands",
    "S. Geo. and the Is.": "South Georgia and the South Sandwich Islands",
    "S. Sudan": "South Sudan",
    "Solomon Is.": "Solomon Islands",
    "Spratly Is.": "Spratly Islands",
    "St-Barthélemy": "Saint Barthélemy",
    "St-Martin": "Saint Martin",
    "St. Kitts and Nevis": "Saint Kitts and Nevis",
    "St. Pierre and Miquelon": "Saint Pierre and Miquelon",
    "St. Vin. and Gren.": "Saint Vincent and the Grenadines",
    "Turks and Caicos Is.": "Turks and Caicos Islands",
    "U.S. Minor Outlying Is.": "United States Minor Outlying Islands",
    "U.S. Virgin Is.": "United States Virgin Islands",
    "USNB Guantanamo Bay": "US Naval Base Guantanamo Bay",
    "W. Sahara": "Western Sahara",
    "Wallis and Futuna Is.": "Wallis and Futuna Islands",
}

#: Natural Earth's ISO_A3 is "-99" for France and Norway (their overseas parts make the
#: admin-0 unit differ from the ISO entity); NE's own ISO_A3_EH / ADM0_A3 give these codes.
#: Every other "-99" (Kosovo, Somaliland, N. Cyprus, Baikonur, ...) has no ISO code -> None.
_ISO_A3_FIXES: dict[str, str] = {"France": "FRA", "Norway": "NOR"}

# Packaged data, checked against geo-intel-offline 1.5.0 as installed:
# * geo_intel_offline/data/polygons.json.gz: gzip JSON object {"<id>": feature}, 258
#   features (ids "1".."258"); a feature is {"exterior": ring, "holes": [ring, ...]} or, for
#   151 multi-part countries, additionally {"multi": true, "exteriors": [ring, ...]} (then
#   "exterior" == exteriors[0]).  A ring is a list of [lat, lon] pairs -- latitude FIRST
#   (e.g. Malta's first vertex is [35.80.., 14.18..]).  Rings were Douglas-Peucker
#   simplified by the package's builder (its default tolerance is 0.005 deg): 128 rings
#   self-intersect, so rings are repaired with make_valid.  The holes of a multi-part feature are pooled for
#   the whole feature (13 features have holes: Lesotho in South Africa, Vatican and San
#   Marino in Italy, Kyrgyz enclaves...), so each hole is cut from the exterior(s) that
#   contain it.
# * geo_intel_offline/data/metadata.json.gz: {"<id>": {"name", "iso2", "iso3", "continent",
#   "timezone"}}.  "name" is Natural Earth's short NAME field ("Switzerland", "United
#   States of America", "Russia", "Bosnia and Herz.", "Dem. Rep. Congo"); "iso3" is
#   ISO_A3, "-99" for 22 features including France and Norway.
# * It is the 1:10m admin-0 map (the package README builds it from
#   ne_10m_admin_0_countries.geojson; 258 = the 1:10m feature count): Malta, Singapore,
#   Andorra, Liechtenstein, Monaco, Vatican, San Marino and Tuvalu are all present; the
#   1:110m pyogrio fixture (177 features) has none of Malta, Singapore, Andorra and
#   Liechtenstein.
# * Antimeridian: features are split at +-180.  Only Fiji, Russia and Antarctica reach it,
#   each with rings ending exactly on lon 180 and others starting on lon -180; apart from
#   Antarctica (a ring running along lat -90 from -180 to 180, valid in the plane) no
#   ring spans over 180 degrees of longitude, so planar lon/lat geometry is correct.


def _read_gz_json(path: Path) -> Any:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _ring_polygons(ring: list[list[float]]) -> list[shapely.Polygon]:
    if len(ring) < 3:
        return []
    coords = np.asarray(ring, dtype=np.float64)[:, ::-1]  # [lat, lon] -> (x=lon, y=lat)
    return valid_polygons(shapely.Polygon(coords))


def _geo_intel_feature(feature: Mapping[str, Any]) -> shapely.MultiPolygon:
    rings = feature.get("exteriors") if feature.get("multi") else None
    if not rings:
        rings = [feature["exterior"]]
    exteriors = [p for ring in rings for p in _ring_polygons(ring)]
    for ring in feature.get("holes") or []:
        for hole in _ring_polygons(ring):
            inside = hole.representative_point()
            for i, ext in enumerate(exteriors):
                if ext.area > hole.area and ext.contains(inside):
                    exteriors[i] = ext.difference(hole)
    polys = [p for g in exteriors for p in valid_polygons(g)]
    return shapely.MultiPolygon(polys)


@lru_cache(maxsize=1)
def _country_index() -> PolygonIndex:
    data_dir = package_dir("geo_intel_offline") / "data"
    features = _read_gz_json(data_dir / "polygons.json.gz")
    metadata = _read_gz_json(data_dir / "metadata.json.gz")
    ids = sorted(features, key=int)
    geoms = [_geo_intel_feature(features[i]) for i in ids]
    ne_names = [metadata[i]["name"] for i in ids]
    iso = []
    for name, i in zip(ne_names, ids):
        code = str(metadata[i].get("iso3") or "")
        iso.append(_ISO_A3_FIXES.get(name) or (code if len(code) == 3 and code.isalpha() else None))
    return PolygonIndex(
        geoms,
        {
            "country": [NE_NAME_EXPANSIONS.get(n, n) for n in ne_names],
            "ne_name": ne_names,
            "iso_a3": iso,
        },
    )


class CountryLayer(PolygonLayer):
    """Natural Earth 1:10m admin-0 countries shipped in geo-intel-offline (offline).

    Columns: ``country`` (Natural Earth NAME, with abbreviations such as "Dem. Rep.
    Congo" spelled out unless ``expand_names=False``) and ``iso_a3`` (None where Natural
    Earth has no ISO code, e.g. Kosovo).
    """

    def __init__(self, max_distance_m: float = 0.0, *, expand_names: bool = True):
        super().__init__(
            _country_index(),
            {"country": "country" if expand_names else "ne_name", "iso_a3": "iso_a3"},
            name="country",
            source=(
                "Natural Earth 1:10m admin-0 countries (NAME, ISO_A3; simplified) via "
                f"geo-intel-offline {dist_version('geo-intel-offline')} "
                "(geo_intel_offline/data/polygons.json.gz, metadata.json.gz)"
            ),
            is_proxy=False,
            max_distance_m=max_distance_m,
        )
        self.expand_names = expand_names

    def __reduce__(self):
        # pickle by parameters (e.g. for Dask/Prefect workers): the polygons reload from
        # the package, once per process, instead of travelling with every task
        return (_make_country_layer, (self.max_distance_m, self.expand_names))


def _make_country_layer(max_distance_m: float, expand_names: bool) -> CountryLayer:
    return CountryLayer(max_distance_m, expand_names=expand_names)
