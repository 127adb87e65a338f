"""``avatar-engine eval``: a reproducible quality report, measured the same way for every renderer.

Modules: :mod:`.metrics` (pure metric functions), :mod:`.dataset` (the ``clips.csv`` /
``images.csv`` index), :mod:`.runner` (self- and cross-reenactment protocol), :mod:`.report`
(JSON, markdown and contact-sheet files). Identity embeddings live in :mod:`avatar_engine.face.identity`.
"""
from avatar_engine.eval.runner import EvalConfig, EvalResult, run_evaluation
from avatar_engine.eval.report import write_report

__all__ = ["EvalConfig", "EvalResult", "run_evaluation", "write_report"]
