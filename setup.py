# cffi's build hook is a setup() keyword, so it cannot live in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["csrc/build_core.py:ffibuilder"])
