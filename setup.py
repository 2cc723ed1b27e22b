"""One build step on top of pyproject.toml: ship sagan_plugin_hook.pth at the root of site-packages.

A .pth file is not package data, so this step copies it: into build_lib for a wheel, and for
`pip install -e` straight into the editable wheel's tree (setuptools' install_lib in that mode),
since an editable wheel maps the packages to the checkout and installs nothing from build_lib.
"""

import os

from setuptools import Command, setup
from setuptools.command.build import build

PTH = "sagan_plugin_hook.pth"


class build_pth(Command):
    description = f"put {PTH} at the root of the wheel"
    user_options = []

    def initialize_options(self) -> None:
        self.build_lib = None
        self.editable_mode = False

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def run(self) -> None:
        root = (self.get_finalized_command("install").install_lib if self.editable_mode
                else self.build_lib)
        self.copy_file(PTH, os.path.join(root, PTH))

    def get_source_files(self) -> list[str]:
        return [PTH]

    def get_outputs(self) -> list[str]:
        return [os.path.join(self.build_lib, PTH)]

    def get_output_mapping(self) -> dict[str, str]:
        return {os.path.join(self.build_lib, PTH): PTH}


class build_with_pth(build):
    sub_commands = [*build.sub_commands, ("build_pth", None)]


setup(cmdclass={"build": build_with_pth, "build_pth": build_pth})
