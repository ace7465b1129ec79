"""The main job as users run it: apply the profile, own one Prefect API, run retrain, print a summary."""
from __future__ import annotations

import json
import time
from pathlib import Path

from components.layout import (CURATION_REPORT, EVAL_GRIDS_DIR, EVAL_REPORT, METRICS_REPORT, PIPELINE_DIR, RETRAIN_LOCK,
                               RUN_RECORD, SYNTH_OUT, TRAIN_REPORT, VAE_REPORT)
from components.params import apply_profile, config_with_profile, load_params
from flows.prefect_api import owned_prefect_api


STAGE_STATES = {"ran": "ran", "skipped": "up to date, skipped", "restored": "restored from DVC's run cache"}


def run_main_job(root: Path, profile: str | None, stages: list[str] | None, force: bool,
                 stage_retries: int = 1, lock_wait_s: float = 0.0, allow_unreproducible: bool = False) -> dict:
    from components.locks import LockHeld, exclusive_lock
    from components.majortom.summary import format_summary, summarise_world
    from components.ops.preflight import PreflightFailed, check_project
    from components.processes import Terminated
    from flows.retrain import StageFailed, retrain

    started = time.perf_counter()
    try:
        with owned_prefect_api() as api_url:
            # Taken before the profile rewrites params.yaml (never under a running retrain); the
            # flow takes the same lock again, reentrant within this process.
            with exclusive_lock(root / RETRAIN_LOCK, purpose="a retrain", wait_s=lock_wait_s, reentrant=True):
                if profile:
                    # the profile's checks before params.yaml changes: a run that cannot start leaves it as it was
                    check_project(root, config_with_profile(profile, root))
                    changed = apply_profile(profile, root)
                    print(f"profile {profile!r} applied to params.yaml ({len(changed)} values changed)")
                print(f"Prefect API for this run: {api_url}")
                outcome = retrain(project_dir=str(root), stages=stages, force=force, stage_retries=stage_retries,
                                  allow_unreproducible=allow_unreproducible)
    except LockHeld as busy:
        raise SystemExit(f"The main job did not start: {busy}") from None
    except PreflightFailed as failure:
        raise SystemExit(f"\nThe main job did not start: {failure}\nNo stage ran; `mesa check` repeats these "
                         "checks.") from None
    except StageFailed as failure:
        raise SystemExit(f"\nThe main job stopped: {failure}\nFix the cause and rerun; finished stages are kept "
                         "(training resumes from its last checkpoint); the registry and the data versions "
                         "were not touched.") from None
    except Terminated:
        print("\nThe main job was stopped (SIGTERM): its stage processes and the temporary Prefect server were "
              "stopped; finished stages are kept and a rerun resumes (training from its last checkpoint).",
              flush=True)
        raise
    print("\nStages:")
    for result in outcome["stages"]:
        print(f"  {result['stage']:10s} {STAGE_STATES[result['outcome']]} ({result['seconds']} s)")
    params = load_params(root)
    raw = root / params["data"]["raw_dir"]
    if raw.exists():
        print()
        # The validate stage already decoded every cell once: report what it found rather than
        # decode the whole world a second time (`mesa data summary` still does, on request).
        print(format_summary(summarise_world(raw, decode=False)))
        curation = root / CURATION_REPORT
        if curation.exists():
            report = json.loads(curation.read_text())
            print(f"  read back and curated: {report['kept_cells']} of {report['input_cells']} cells kept; "
                  f"rejected per reason: {report['rejected_per_reason']}")
    print_model_summary(root)
    print_versions_summary(root, outcome)
    print(f"\nDone in {time.perf_counter() - started:.0f} s. Outputs: {raw}/, models/, reports/.")
    return outcome


def print_versions_summary(root: Path, outcome: dict) -> None:
    """Data version, push, model version and the promotion decision of this run."""
    from components.versioning.stages import data_version
    from flows.promote import decision_summary

    pushed = outcome.get("pushed")
    raw_dir = str((load_params(root).get("data") or {}).get("raw_dir", SYNTH_OUT.as_posix()))
    print(f"  data version (dvc.lock): {data_version(root, raw_dir)}; "
          f"{'pushed to the DVC remote' if pushed else 'not pushed (versioning.push is off or a partial run)'}")
    registration = outcome.get("registration")
    if registration:
        state = "new, alias challenger" if registration["new"] else "already registered: nothing new"
        print(f"  model version: {registration['model']} version {registration['version']} ({state}); "
              f"MLflow run {registration['run_id']}")
        print(f"  promotion: {decision_summary(outcome.get('promotion'))}; serve the champion with "
              f"`mesa serve --model models:/{registration['model']}@champion`")
    grids = sorted((root / EVAL_GRIDS_DIR).glob("*.png"))
    if grids:
        print(f"  grids: {', '.join(str(g.relative_to(root)) for g in grids)}")


def print_model_summary(root: Path) -> None:
    """What the vae and train stages produced, from their reports (nothing is recomputed)."""
    vae, train, record = root / VAE_REPORT, root / TRAIN_REPORT, root / RUN_RECORD
    if vae.exists():
        v = json.loads(vae.read_text())
        print(f"  VAE ({v['source']}): held-out RGB PSNR {v['rgb_psnr_db']:.1f} dB (bilinear "
              f"{v['rgb_bilinear_psnr_db']:.1f}), DEM RMSE {v['dem_rmse_m']:.1f} m (bilinear "
              f"{v['dem_bilinear_rmse_m']:.1f} m), scaling factor {v['scaling_factor']:.3f}")
    if train.exists():
        t = json.loads(train.read_text())
        first, last = t.get("validation_first") or {}, t.get("validation_last") or {}
        if first and last:
            print(f"  training: {t['step']} steps; validation loss {first['loss']:.3f} -> {last['loss']:.3f} "
                  f"({1 - last['loss'] / first['loss']:.0%} lower; captions shuffled: "
                  f"{last['loss_shuffled_captions']:.3f})")
    metrics = root / METRICS_REPORT
    if metrics.exists():
        m = json.loads(metrics.read_text())
        accuracy = m["metrics"]["landform_balanced_accuracy"]
        print(f"  evaluation: {m['generations']} generations; landform balanced accuracy {accuracy['value']} "
              f"(chance {m['landform_chance']}, captions shuffled {m['landform_balanced_accuracy_shuffled_captions']}, "
              f"real pairs {accuracy['real_reference']}); report {EVAL_REPORT}")
        if m.get("landform_balanced_accuracy_paper_words") is not None:
            print(f"  in the paper's landform words (\"mountains\"): {m['landform_balanced_accuracy_paper_words']} "
                  f"(chance {m.get('landform_chance_paper_words')}, captions shuffled "
                  f"{m.get('landform_balanced_accuracy_paper_words_shuffled_captions')})")
        loss = m["metrics"].get("heldout_denoising_loss") or {}
        if loss.get("value") is not None:
            print(f"  held-out denoising loss {loss['value']} (captions shuffled: "
                  f"{m.get('heldout_denoising_loss_shuffled_captions')})")
    if record.exists():
        r = json.loads(record.read_text())
        print(f"  pipeline: {PIPELINE_DIR} (MLflow run {r['run_id']}, model {r.get('model_uri')}); try "
              f'`mesa generate "A Sentinel-2 image of hills in France in June" --out generated`')
