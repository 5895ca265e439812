"""One package per AWS service; each operations.py maps operation names to small functions."""
