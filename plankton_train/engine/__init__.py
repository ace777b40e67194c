"""The training engine: the pretraining step loop, the fine-tuning epoch loops and what they run on.

``pretrain_loop.py`` (:class:`~plankton_train.engine.pretrain_loop.Trainer`: accumulated micro-steps, DDP,
metrics, checkpoints), ``finetune_loop.py`` (train epoch, evaluation, best-validation epoch loop,
``predict_probs``), ``device.py`` (device by name, autocast, torch.compile, torchrun process group),
``precision.py`` (the precision and compile-backend names, torch-free for the CLI), ``optim.py`` (parameter
groups, layer decay, cosine schedule), ``rng.py`` (RNG states for exact resume). The engine uses ``models/``
and ``data/``, and never the protocol or the CLI; :mod:`plankton_train.pretrain` and
:mod:`plankton_train.finetune` wire it up.
"""
