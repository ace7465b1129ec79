"""Versions you can rebuild and storage you can reclaim.

- `rebuild`: check a registered model version's commit out in a temporary git worktree, pull its
  recorded data, rerun its DVC stages and compare every output (and the weights) with the record.
- `retention`: what a garbage collection may delete (MLflow runs and their artifacts, training
  checkpoints, DVC cache and remote objects) while keeping what registered versions and recent
  runs need.
- `dvc_git`: the git and DVC plumbing both share (commands, remotes, caches, snapshot projects).
- `stages`: the main job's view of its DVC stages: their order, `dvc repro` of one with its outcome
  (ran, skipped, restored), `dvc push`, the data version dvc.lock records.
"""
