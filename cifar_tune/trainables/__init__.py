"""Ray-facing training tasks: the Tune trainable (trainable.py), the per-epoch device-sharing
ledger (occupancy.py), one isolated timing block (timed_block.py)."""
