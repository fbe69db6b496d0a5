"""Adversarial simulation driving the real protocol core."""
