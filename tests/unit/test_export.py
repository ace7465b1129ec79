"""Exports open in the tools artists use: rasterio for the GeoTIFFs, PIL for the PNGs, raw bytes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from PIL import Image

from components.export.terrain import (
    NOMINAL_EPSG,
    NOMINAL_ORIGIN,
    ExportError,
    export_all,
    export_geotiffs,
    export_heightmap,
    export_previews,
    load_heightmap,
)
from components.majortom.grid import TILE_SIZE_M, cell_footprint

H, W = 48, 64  # deliberately not square: catches swapped axes


def _sample(h=H, w=W, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    hill = 1800.0 * np.exp(-(((yy - h / 3) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2))
    dem = (120.5 + hill + rng.normal(0, 3, (h, w))).astype(np.float32)
    dem[5, 7] = np.nan  # one nodata pixel
    return rgb, dem


def _no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("cell", ["454U_120R", "300D_50L"])
def test_geotiffs_in_a_grid_cell(tmp_path, cell):
    rgb, dem = _sample()
    extent = 640.0  # 10 m pixels across 64 px
    paths = export_geotiffs(rgb, dem, tmp_path, name="t", grid_cell=cell, extent_m=extent,
                            prompt="a snowy ridge", seed=7, model="mesa-tiny")
    fp = cell_footprint(cell)
    left, bottom, right, top = fp.bounds
    for key, count, dtype in (("rgb_tif", 3, "uint8"), ("dem_tif", 1, "float32")):
        with rasterio.open(paths[key]) as src:
            assert src.crs.to_epsg() == fp.epsg
            assert (src.height, src.width, src.count) == (H, W, count)
            assert src.dtypes == (dtype,) * count
            t = src.transform
            assert (t.a, t.b, t.d, t.e) == pytest.approx((10.0, 0.0, 0.0, -10.0))
            # origin inside the footprint, raster centred on it
            assert left <= t.c <= right and bottom <= t.f <= top
            b = src.bounds
            assert (b.left + b.right) / 2 == pytest.approx(fp.centre[0], abs=1e-6)
            assert (b.bottom + b.top) / 2 == pytest.approx(fp.centre[1], abs=1e-6)
            assert b.left - left == pytest.approx((TILE_SIZE_M - extent) / 2, abs=1e-6)
            tags = src.tags()
            assert tags["prompt"] == "a snowy ridge" and tags["seed"] == "7"
            assert tags["model"] == "mesa-tiny"
            assert tags["GRID_CELL"] == cell and tags["PLACEMENT"] == "grid_cell"
            # tiled (one 64 px tile here; rasterio's profile only says "tiled" when blocks are
            # narrower than the raster) and compressed
            assert src.block_shapes == [(64, 64)] * count
            assert src.compression.name == "deflate"
            data = src.read()
        if key == "rgb_tif":
            np.testing.assert_array_equal(data, np.moveaxis(rgb, 2, 0))
        else:
            assert np.isnan(src.nodata)
            np.testing.assert_array_equal(data[0], dem)  # exact, NaN where NaN
    assert _no_temp_files(tmp_path)


def test_paper_scale_cell_footprint(tmp_path):
    rgb = np.zeros((768, 768, 3), np.uint8)
    dem = np.linspace(0, 500, 768 * 768, dtype=np.float32).reshape(768, 768)
    paths = export_geotiffs(rgb, dem, tmp_path, grid_cell="454U_120R")
    fp = cell_footprint("454U_120R")
    with rasterio.open(paths["dem_tif"]) as src:
        assert src.res == pytest.approx((10.0, 10.0))
        assert src.block_shapes == [(256, 256)] and src.profile["tiled"]
        # the centre 7,680 m of the 10,680 m footprint: 1,500 m in from every edge
        expected = (fp.bounds[0] + 1500, fp.bounds[1] + 1500, fp.bounds[2] - 1500,
                    fp.bounds[3] - 1500)
        assert tuple(src.bounds) == pytest.approx(expected, abs=1e-6)
        assert src.transform == fp.transform(10.0) @ rasterio.Affine.translation(150, 150)


def test_geotiffs_nominal_placement(tmp_path):
    rgb, dem = _sample()
    paths = export_geotiffs(rgb, dem, tmp_path, extent_m=1280.0, seed=1)
    for key in ("rgb_tif", "dem_tif"):
        with rasterio.open(paths[key]) as src:
            assert src.crs.to_epsg() == NOMINAL_EPSG
            assert (src.transform.c, src.transform.f) == NOMINAL_ORIGIN
            assert src.res == pytest.approx((20.0, 20.0))
            assert src.tags()["PLACEMENT"] == "nominal"
            assert "not a real location" in src.tags()["PLACEMENT_NOTE"]
            assert "GRID_CELL" not in src.tags()


def test_heightmap_png_raw_and_sidecar_give_back_metres(tmp_path):
    _, dem = _sample()
    paths = export_heightmap(dem, tmp_path, "hm", pixel_size_m=10.0)
    meta = json.loads(paths["heightmap_json"].read_text())
    finite = np.isfinite(dem)
    assert meta["min_m"] == float(np.nanmin(dem)) and meta["max_m"] == float(np.nanmax(dem))
    assert meta["offset_m"] == meta["min_m"]
    scale = meta["scale_m_per_unit"]
    assert scale == pytest.approx((meta["max_m"] - meta["min_m"]) / 65535)
    assert (meta["width"], meta["height"], meta["pixel_size_m"]) == (W, H, 10.0)
    assert "offset_m" in meta["how_to_get_metres"] and meta["nodata_pixels"] == 1

    with Image.open(paths["heightmap_png"]) as img:
        assert img.mode in ("I;16", "I") and img.size == (W, H)
        png = np.asarray(img).astype(np.int64)
    assert png.min() == 0 and png.max() == 65535
    metres = meta["offset_m"] + png * scale
    err = np.abs(metres[finite] - dem[finite].astype(np.float64))
    assert err.max() <= scale / 2 + 1e-9

    raw_bytes = paths["heightmap_raw"].read_bytes()
    assert len(raw_bytes) == 2 * H * W
    raw = np.frombuffer(raw_bytes, dtype="<u2").reshape(H, W)
    np.testing.assert_array_equal(raw, png)
    for which in ("png", "raw"):
        back = load_heightmap(paths["heightmap_json"], which)
        assert np.abs(back[finite] - dem[finite]).max() <= scale / 2 + 1e-9
    assert _no_temp_files(tmp_path)


def test_flat_heightmap_round_trips_exactly(tmp_path):
    dem = np.full((16, 16), 42.25, np.float32)
    paths = export_heightmap(dem, tmp_path, "flat")
    meta = json.loads(paths["heightmap_json"].read_text())
    assert meta["scale_m_per_unit"] == 0.0
    np.testing.assert_array_equal(load_heightmap(paths["heightmap_json"], "raw"), 42.25)


def test_previews_are_rgb_pngs(tmp_path):
    rgb, dem = _sample()
    paths = export_previews(rgb, dem, tmp_path, "p", 10.0)
    for key in ("rgb_png", "hillshade_png", "relief_png"):
        with Image.open(paths[key]) as img:
            assert img.format == "PNG" and img.mode == "RGB" and img.size == (W, H)
            arr = np.asarray(img)
        assert arr.std() > 0  # not a blank image
    with Image.open(paths["rgb_png"]) as img:
        np.testing.assert_array_equal(np.asarray(img), rgb)


def test_export_all_writes_every_file(tmp_path):
    rgb, dem = _sample()
    paths = export_all(rgb, dem, tmp_path / "new" / "dir", name="s", grid_cell="454U_120R",
                       extent_m=640.0, prompt="p", seed=3, model="m")
    assert set(paths) == {"rgb_tif", "dem_tif", "heightmap_png", "heightmap_raw",
                          "heightmap_json", "rgb_png", "hillshade_png", "relief_png"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    meta = json.loads(paths["heightmap_json"].read_text())
    assert meta["pixel_size_m"] == 10.0


@pytest.mark.parametrize("bad, match", [
    (dict(rgb=np.zeros((H, W, 3), np.float32)), r"t_rgb\.tif.*uint8"),
    (dict(rgb=np.zeros((H, W), np.uint8)), r"t_rgb\.tif.*\(H, W, 3\)"),
    (dict(dem=np.zeros((H, W), np.int16)), r"t_dem\.tif.*float32"),
    (dict(dem=np.zeros((H, W, 1), np.float32)), r"t_dem\.tif.*\(H, W\)"),
    (dict(dem=np.full((H, W), np.nan, np.float32)), r"t_dem\.tif.*all NaN"),
    (dict(dem=np.full((H, W), np.inf, np.float32)), r"t_dem\.tif.*infinite"),
    (dict(dem=np.zeros((H, W + 1), np.float32)), r"t_dem\.tif.*must match"),
])
def test_bad_inputs_name_the_file(tmp_path, bad, match):
    rgb, dem = _sample()
    rgb, dem = bad.get("rgb", rgb), bad.get("dem", dem)
    with pytest.raises(ExportError, match=match):
        export_geotiffs(rgb, dem, tmp_path, name="t")
    assert list(tmp_path.iterdir()) == []


def test_bad_dem_for_heightmap_and_other_errors(tmp_path):
    rgb, dem = _sample()
    with pytest.raises(ExportError, match=r"x_heightmap\.png.*all NaN"):
        export_heightmap(np.full((4, 4), np.nan, np.float32), tmp_path, "x")
    with pytest.raises(ExportError, match=r"does not fit"):
        export_geotiffs(rgb, dem, tmp_path, grid_cell="454U_120R", extent_m=20_000.0)
    with pytest.raises(ExportError, match=r"grid_cell 'nowhere'"):
        export_geotiffs(rgb, dem, tmp_path, grid_cell="nowhere")
    with pytest.raises(ExportError, match=r"reserved"):
        export_geotiffs(rgb, dem, tmp_path, PLACEMENT="x")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_atomically(tmp_path):
    rgb, dem = _sample()
    first = export_geotiffs(rgb, dem, tmp_path, name="r", seed=1)
    export_geotiffs(rgb, dem + 1, tmp_path, name="r", seed=2)
    with rasterio.open(first["dem_tif"]) as src:
        assert src.tags()["seed"] == "2"
        np.testing.assert_array_equal(src.read(1), dem + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r_dem.tif", "r_rgb.tif"]


def test_every_file_an_artist_gets_is_readable_by_others_under_umask_022(tmp_path):
    """Exports are shared (a teammate, a web server): 0644 under umask 022, like any other file."""
    import os
    import stat

    from components.export.generation import generate_and_export
    from testsupport.pipelines import tiny_random_pipeline

    old = os.umask(0o022)
    try:
        paths = export_all(*_sample(), tmp_path / "exports", name="s", prompt="p", seed=3, model="m")
        pipeline = tiny_random_pipeline(["A Sentinel-2 image of hills"], image_px=16, seed=0)
        result = generate_and_export(pipeline, "A Sentinel-2 image of hills", [42], tmp_path / "generated",
                                     steps=1, guidance=2.0)
    finally:
        os.umask(old)
    assert set(paths) >= {"rgb_tif", "dem_tif", "heightmap_png", "heightmap_raw", "heightmap_json", "rgb_png",
                          "hillshade_png", "relief_png"}
    written = [*paths.values(), *(tmp_path / "generated" / name for name in result["files"])]
    assert result["manifest"].name == "generation.json" and len(written) == 2 * len(paths) + 1
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: "0o644" for p in written}
    assert stat.S_IMODE((tmp_path / "generated").stat().st_mode) == 0o755
    assert _no_temp_files(tmp_path / "exports") and _no_temp_files(tmp_path / "generated")
