"""Issue 8's acceptance test: on the demo world (balanced across landform classes), the trained
tiny model's generated DEMs have the landform their captions ask for more often than chance and
more often than the same model given captions shuffled across cells.

The whole DAG under real DVC on the demo profile (what `make demo` trains), fixed seeds, at least
60 generations. The heaviest test of the suite (18 minutes on one worker of a two-worker `make test`):
the micro world is too small for a model to learn what the captions say.

What three training seeds support (demo profile: the paper's captions of issue 24, text encoder
trained jointly, the DEM companded at 50 m and guidance 2 of issue 26; `make demo` for seed 0 at two
threads, seeds 1 and 2 at one): landform balanced accuracy 0.840, 0.741, 0.679 (chance 0.2); with
the captions shuffled across cells 0.131, 0.158, 0.198 (gaps 0.71, 0.58, 0.48); the held-out
denoising loss with the cells' own captions below the shuffled captions' (0.577 / 0.766 for seed 0;
it does not depend on guidance, and was below in all five earlier runs). At the paper's guidance 7
the same models gave 0.500, 0.587, 0.473. CI's machine (another CPU, so other floating-point
rounding: in effect a fourth training seed) gave 0.542 for seed 0 (2026-12-07), so the floors sit
at twice chance and 0.2 above the shuffled control, about 0.14 below the worst run seen.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import make_micro_project


@pytest.mark.slow(minutes=18)
@pytest.mark.runs_last
@pytest.mark.timeout(2400)
def test_the_trained_demo_model_generates_the_landform_its_caption_asks_for(prefect_api, tmp_path):
    from components.params import load_params

    root = make_micro_project(tmp_path / "demo", profile="demo")
    # Its training logs stay out of the shared server (the flow runs and states still go there).
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "DVC_NO_ANALYTICS": "1",
           "PREFECT_LOGGING_TO_API_ENABLED": "false"}
    result = subprocess.run([sys.executable, "-m", "dvc", "repro", "evaluate"], cwd=root, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    settings = load_params(root)["evaluate"]
    report = json.loads((root / "reports/metrics.json").read_text())
    assert report["seeds"] == settings["seeds"] == [42, 50, 666]
    assert report["generations"] >= 60
    # The demo world is balanced: five landform classes, so chance is 1/5.
    assert report["landform_chance"] == pytest.approx(0.2)
    accuracy = report["metrics"]["landform_balanced_accuracy"]["value"]
    shuffled = report["landform_balanced_accuracy_shuffled_captions"]
    own = report["metrics"]["heldout_denoising_loss"]["value"]
    # One line the CI log keeps whole (pytest cuts a long report short): the numbers this run measured.
    measured = (f"balanced accuracy {accuracy:.3f}, shuffled captions {shuffled:.3f}, held-out loss own "
                f"{own:.3f} vs shuffled {report['heldout_denoising_loss_shuffled_captions']:.3f}")
    print(measured)
    assert accuracy >= 0.4, measured  # runs seen: 0.542-0.840
    # the captions, not a bias towards some classes, make it: shuffled captions fall back towards chance
    assert accuracy - shuffled >= 0.2, measured  # seeds: 0.48-0.71
    # The model reads its captions: its own caption predicts the held-out noise better than another cell's.
    assert own < report["heldout_denoising_loss_shuffled_captions"], measured
    # The same captions in the paper's words ("mountains" for both mountain classes; issue 24): four
    # words, so chance is 1/4; reported with its shuffled control (0.828, 0.725, 0.651 over the
    # seeds above).
    assert report["landform_chance_paper_words"] == pytest.approx(0.25)
    assert 0 <= report["landform_balanced_accuracy_paper_words"] <= 1
    assert 0 <= report["landform_balanced_accuracy_paper_words_shuffled_captions"] <= 1
    # The classifier itself is right on the real held-out DEMs (the metric can tell classes apart).
    assert report["metrics"]["landform_balanced_accuracy"]["real_reference"] > 0.9
