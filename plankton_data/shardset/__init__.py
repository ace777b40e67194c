"""Shard sets: ingested datasets -> one globally shuffled pretraining set (``plankton-data shard``)."""

from plankton_data.shardset.build import REASONS, ShardSetReport, build_shard_set, load_shared_taxa

__all__ = ["REASONS", "ShardSetReport", "build_shard_set", "load_shared_taxa"]
