"""avatar-engine: a real-time video-conferencing avatar engine (MetaPortrait method).

The engine proper: dense landmarks (:mod:`.landmarks`), face crops (:mod:`.crop`), landmark topology
and connectivity images (:mod:`.topology`, :mod:`.rasterizer`), motion retargeting
(:mod:`.retarget`), the mesh warp (:mod:`.warp`), the neural networks (:mod:`.warp_net`,
:mod:`.refine_net`, :mod:`.sr_net`), renderers (:mod:`.renderers`), the per-frame pipeline
(:mod:`.reenact`), offline rendering, evaluation, training and the ``avatar-engine`` command line
(:mod:`.cli`). The live engine is in the sibling package ``runtime``; see ``docs/design.md``.
"""

__version__ = "0.1.0"
