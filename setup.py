"""Packaging for certbot-incapsula (metadata here so that old setuptools and pip can read it)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="certbot-incapsula",
    version="0.1.0",
    description="Certbot installer plugin: upload certificates to Imperva Cloud WAF (Incapsula) sites",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.8",
    packages=find_packages(include=["certbot_incapsula", "certbot_incapsula.*"]),
    include_package_data=True,
    # Low bounds only: a pin here would make pip upgrade or downgrade a distro's certbot.
    install_requires=[
        "certbot>=1.12.0",
        "requests>=2.20.0",
        "cryptography>=3.2",
    ],
    # `status --nagios` and `--prometheus-file`; certbot's own environment does without them.
    extras_require={
        "monitoring": ["nagiosplugin>=1.3", "prometheus_client>=0.10"],
    },
    entry_points={
        "certbot.plugins": [
            "incapsula = certbot_incapsula.installer:Installer",
        ],
        "console_scripts": [
            "certbot-incapsula = certbot_incapsula.cli:main",
            "certbot-incapsula-status = certbot_incapsula.cli:status_main",
        ],
    },
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: Plugins",
        "Intended Audience :: System Administrators",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Internet :: WWW/HTTP",
        "Topic :: Security",
        "Topic :: System :: Installation/Setup",
        "Topic :: System :: Networking",
        "Topic :: System :: Systems Administration",
        "Topic :: Utilities",
    ],
)
