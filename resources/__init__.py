"""Shipped checkpoints and small assets (a package so that installs carry them)."""
