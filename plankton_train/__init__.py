"""plankton_train: MAE pretraining, few-label fine-tuning and evaluation on plankton shard sets."""

__version__ = "0.1.0"
