"""The package list, found rather than written down (everything else is in pyproject.toml).

The import package `freshd` is two folders, daemon/ (freshd) and connectors/ (freshd.connectors),
mapped in pyproject.toml's package-dir.  setuptools' `packages.find` names what it finds after the
folder (`admin`, `woocommerce`), not the package it maps to, so the two trees are walked here:
a new provider folder under connectors/ ships with no edit anywhere else.
"""

from setuptools import find_packages, setup


def tree(package: str, folder: str) -> list[str]:
    """`package` (the folder `folder`) and every package below it."""
    return [package, *(f"{package}.{name}" for name in find_packages(folder))]


setup(packages=[*tree("freshd", "daemon"), *tree("freshd.connectors", "connectors")])
