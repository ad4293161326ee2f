"""Reusable networks: SDF MLP, positional encoding, ResNet encoders."""
