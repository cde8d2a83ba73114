"""Utilities that import nothing else of the package: machine description, measurement, tables."""
