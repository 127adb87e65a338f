"""Enrollment and fast personalization (``avatar-engine enroll``, ``avatar-engine train meta``).

Modules, in the order enrollment uses them:

- :mod:`calibration.quality`: per-frame checks with a hint each (dark, small, cut off, blurry, several faces).
- :mod:`calibration.capture`: the guided capture script, progress ring and preview overlay; writes the
  usable frames to a video and picks the source photo and neutral landmarks.
- :mod:`calibration.personalize`: the capture prepared like the training data, split 80/20, fine-tuned
  from the meta-learned weights, scored before/after on the held-back frames, contact sheet.
- :mod:`calibration.adapt`: the fine-tuning loop shared with meta-training (pair pools, parameter sets).
- :mod:`calibration.reptile`: Reptile meta-training (MetaPortrait section 3.2), DDP-ready, resumable.
- :mod:`calibration.profiles`: profiles on disk (atomic writes, checks, one-line errors).
- :mod:`calibration.enroll`: the whole flow.

The package builds on the core (``avatar_engine``) only; the command line (``avatar_engine.cli.enroll``)
brings the camera and the preview window from ``runtime``.
"""
