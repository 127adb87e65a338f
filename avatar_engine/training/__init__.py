"""Training: one trainer core and its users.

* :mod:`.core`: config loading (:func:`~.core.load_toml_config`), seeding, atomic checkpoints,
  the loss log and the step loop (:func:`~.core.run_steps`); :mod:`.ddp`: process group setup and
  cleanup (:func:`~.ddp.distributed`).
* :mod:`.step` + :mod:`.batches`: the fast training step of the neural base model
  (:func:`~.step.build_step`) and whole training batches built in the data-loader workers
  (:class:`~.batches.PairBatches`): the API for fine-tuning the model on one person's frames.
* Users: :mod:`.trainer` (``avatar-engine train``: the base model, warp then joint stage, optional
  patch discriminator :mod:`.discriminator`; losses in :mod:`.losses`) and :mod:`.sr`
  (``avatar-engine train sr``: the temporal super-resolution network).

``avatar-engine train --config configs/neural_lite.toml`` runs :func:`~.trainer.train`; launched with
``torchrun`` it trains data-parallel (DistributedDataParallel), otherwise in one process.
"""
