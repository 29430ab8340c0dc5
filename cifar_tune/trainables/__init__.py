"""Ray Tune trainables: the training loop (train.py) and its Tune wrapper (trainable.py)."""
