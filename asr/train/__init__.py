"""Training: manifests (or shards) and a config in, checkpoints and a model package out.

- :mod:`asr.train.checkpoint`: reading checkpoints, averaging them;
- :mod:`asr.train.resume`: ``--resume`` (which checkpoint, run ids, damaged files set aside);
- :mod:`asr.train.callbacks`: atomic checkpoint writes, epoch summaries, skipped items;
- :mod:`asr.train.datamodule`: the Lightning data module (manifests or shards, bucketing sampler);
- :mod:`asr.train.training`: the LightningModule and :func:`~asr.train.training.train`;
- :mod:`asr.train.export`: checkpoints to a model package (``asr export``), TorchScript, ONNX.

Import order inside: checkpoint → resume → callbacks, datamodule → training; checkpoint → export.
"""
