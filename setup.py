import re
from pathlib import Path

from setuptools import find_packages, setup

# The version is hostnic.__version__'s, said once.
VERSION = re.search(r'^__version__ = "([^"]+)"', (Path(__file__).parent / "hostnic" /
                    "__init__.py").read_text(), re.M).group(1)  # type: ignore[union-attr]

setup(
    name="hostnic",
    version=VERSION,
    description="Docker network driver that hands a real host NIC to a container",
    python_requires=">=3.11",
    # find_packages() skips twisted.plugins (no __init__.py there, on purpose).
    packages=find_packages(include=["hostnic", "hostnic.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/hostnic_plugin.py"]},
    entry_points={"console_scripts": ["hostnic-ctl = hostnic.ctl:main",
                                      "hostnic-cni = hostnic.cnishim:main"]},
    install_requires=[
        "Twisted>=24.7",
        "klein>=24.8",
        "pyroute2>=0.9",
        "netaddr>=1.3",
        "attrs>=24.2",
    ],
)
