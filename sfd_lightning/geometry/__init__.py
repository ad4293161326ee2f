"""Geometry: cameras, surfaces, mesh extraction, sampling, file IO."""
