"""Measurements of trained models: what their non-local blocks attend to."""
