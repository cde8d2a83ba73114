#!/usr/bin/env python
"""
For `python setup.py develop` and pips older than PEP 660: the project's metadata, dependencies
and packages are all in pyproject.toml, which setuptools reads.
"""

from setuptools import setup

setup()
