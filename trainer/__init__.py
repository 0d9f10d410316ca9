"""Training of the embedding head (``vosctl train``): data, loss, distributed loop, checkpoints.

Entry point: :func:`trainer.train.run_training`, called with a :class:`trainer.settings.TrainSettings`.
"""
