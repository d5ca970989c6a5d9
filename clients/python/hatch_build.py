"""Build hook: ships the protoc output (the repository's generated/schedulerhost) with the client.

The generated modules live at the top of the repository (`make generate` writes them there), two
levels above this project. A wheel built from the repository takes them from there; an sdist
carries a copy under `generated/`, from which a wheel built from the sdist takes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# hatchling is installed in the build environment only.
from hatchling.builders.hooks.plugin.interface import (  # type: ignore[import-not-found, unused-ignore]
    BuildHookInterface,
)


class GeneratedCodeHook(BuildHookInterface):  # type: ignore[type-arg, misc, unused-ignore]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            return  # dev-mode-dirs puts ../../generated on sys.path instead
        root = Path(self.root)
        # An sdist's own copy first; else the repository around this project.
        candidates = (root / "generated", root.parent.parent / "generated")
        source = next((c for c in candidates if (c / "schedulerhost").is_dir()), None)
        if source is None:
            raise FileNotFoundError(
                "generated/schedulerhost not found: build from the scheduler-host repository "
                "(after `make generate`) or from its sdist"
            )
        prefix = "" if self.target_name == "wheel" else "generated/"
        # File by file, so that nothing but the modules (no __pycache__) is shipped.
        for path in sorted((source / "schedulerhost").rglob("*")):
            if path.is_file() and (path.suffix in {".py", ".pyi"} or path.name == "py.typed"):
                relative = path.relative_to(source).as_posix()
                build_data["force_include"][str(path)] = prefix + relative
