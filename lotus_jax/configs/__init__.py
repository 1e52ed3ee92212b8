"""Configs shipped inside the package, so an installed `lotus_jax` runs without the checkout's `configs/`."""
