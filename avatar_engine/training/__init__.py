"""Training of the neural base model: losses, discriminator, distributed setup, trainer.

``avatar-engine train --config configs/neural_lite.toml`` runs :func:`~.trainer.train`; launched with
``torchrun`` it trains data-parallel (DistributedDataParallel), otherwise in one process.
"""
