"""What `accelerate launch` runs in every training process (the train stage starts it).

    accelerate launch --config_file infra/accelerate/cpu.yaml -m flows.train_entry PROJECT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

from flows.settings import configure_environment, record_imported_files


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    project = Path(argv[0] if argv else ".").resolve()
    configure_environment(project)

    from accelerate import PartialState

    from components.atomic import write_json_atomic
    from components.layout import TRAIN_CURVE, TRAIN_REPORT
    from components.params import load_params
    from components.training.loop import train

    result = train(project, load_params(project))
    if PartialState().is_main_process:
        # Versioned metrics: what the run learned, not how long it took; the validation curve is
        # a DVC plot of its own (dvc plots show reports/train_curve.json).
        curve = result.pop("validation_history", [])
        write_json_atomic(project / TRAIN_REPORT,
                          {k: v for k, v in result.items() if k not in ("run_id", "model_uri")})
        write_json_atomic(project / TRAIN_CURVE, curve)
    # MESA_RECORD_IMPORTS: what each training process imported, held against dvc.yaml's code deps.
    record_imported_files("train")


if __name__ == "__main__":
    main()
