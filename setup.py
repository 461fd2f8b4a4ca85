"""Packaging lives in pyproject.toml; this file only ships the start-up hook."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "vllm_spd_plugin_check.pth"


class build_py_with_pth(build_py):
    """Ship the start-up hook that explains a plugin excluded by VLLM_PLUGINS."""

    def run(self):
        super().run()
        self.copy_file(PTH, os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": build_py_with_pth})
