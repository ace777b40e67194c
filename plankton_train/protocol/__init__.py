"""The evaluation protocol of the paper around fine-tuning: splits, the experiment grid, reports, prediction.

``splits.py`` (folds, validation, labelled fractions), ``experiment.py`` (the resumable grid of
:func:`plankton_train.finetune.finetune` cells), ``report.py`` (metrics, tables, figures), ``predict.py``
(classify new images), ``reconstruct.py`` (the MAE reconstruction figure). Nothing is imported here, so
``finetune.py`` can use ``splits`` and ``report`` while ``experiment`` uses ``finetune``.
"""
