"""Prediction, as plan -> read -> infer -> write: a target partitioned by shard and sorted
in space (`targets`), cubes read chunk by chunk (`cubes`), a shard predicted blockwise
(`shard`), the shards merged into one table (`results`). Imports nothing of training."""
