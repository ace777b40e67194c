"""Data loading for training: the streaming shard loader and the paper's image transforms.

Public API: :class:`ShardStream` / :class:`StreamLoader` (pretraining stream), :func:`train_transform`,
:func:`eval_transform`, :func:`normalize` (augment.py).
"""

from plankton_train.data.augment import eval_transform, normalize, train_transform
from plankton_train.data.stream import ShardStream, StreamLoader
from plankton_train.errors import StreamError

__all__ = ["ShardStream", "StreamError", "StreamLoader", "eval_transform", "normalize", "train_transform"]
