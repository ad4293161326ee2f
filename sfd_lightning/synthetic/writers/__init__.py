"""Writers of synthetic data in the real dataset layouts (one module per format)."""
