"""Training: manifests (or shards) and a config in, checkpoints and a model package out.

- :mod:`asr.train.checkpoint`: reading checkpoints, averaging them;
- :mod:`asr.train.resume`: ``--resume`` (which checkpoint, run ids, damaged files set aside);
- :mod:`asr.train.callbacks`: atomic checkpoint writes, epoch summaries, skipped items;
- :mod:`asr.train.datamodule`: the Lightning data module (manifests or shards, bucketing sampler);
- :mod:`asr.train.module`: the LightningModule (CTC losses, optimiser schedule, dev WER/CER);
- :mod:`asr.train.training`: :func:`~asr.train.training.train`, the Trainer and the run's summary;
- :mod:`asr.train.export`: checkpoints to a model package (``asr export``), TorchScript, ONNX.

Import order inside: checkpoint → resume → callbacks, datamodule, module → training; checkpoint → export.
"""
