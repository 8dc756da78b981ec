"""Packaging beyond what pyproject.toml declares: the configuration folder `conf/` stays at the top of the
repository (Hydra's layout, where users edit it) and is carried inside the wheel as `mllm_arb/conf/`,
so that an installed `mllm-arb` composes its configuration from any folder."""

from pathlib import Path

from setuptools import find_packages, setup

CONF = Path(__file__).resolve().parent / "conf"
conf_packages = ["mllm_arb.conf"] + sorted(
    "mllm_arb.conf." + ".".join(p.relative_to(CONF).parts) for p in CONF.rglob("*") if p.is_dir()
)

setup(
    packages=find_packages(include=["mllm_arb", "mllm_arb.*"]) + conf_packages,
    package_dir={"mllm_arb.conf": "conf"},
    package_data={
        "mllm_arb": ["organism/checkpoint/*", "organism/anchor/*", "report/templates/*"],
        **{name: ["*.yaml"] for name in conf_packages},
    },
)
