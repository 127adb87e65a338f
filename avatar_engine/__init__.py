"""avatar-engine: a real-time video-conferencing avatar engine (MetaPortrait method).

The engine proper, one subpackage per stage of the pipeline, data flowing one way:

* :mod:`.io`: photos, videos (decode, encode, audio mux), image <-> tensor.
* :mod:`.face`: landmarks (mediapipe), face crops, the prepared source, identity, topology.
* :mod:`.geometry`: connectivity images, motion retargeting, the mesh warp.
* :mod:`.models`: the neural networks (warp, refine, base model, SR) and their streaming state.
* :mod:`.renderers`: source, mesh and neural renderers behind one interface.
* :mod:`.pipeline`: the per-frame reenactment, the super-resolution stage, offline rendering.
* :mod:`.data`: the corpus, prepared training caches, degradations.
* :mod:`.training`: one trainer core and its users (base model, SR).
* :mod:`.eval`: the quality report.
* :mod:`.cli`: the ``avatar-engine`` command.

The live engine and WebRTC are in the sibling package ``runtime``, enrollment in ``calibration``;
see ``docs/design.md``.
"""

__version__ = "0.1.0"
