"""The wheel ships one top-level package, `cfx_jax`: the repository's `configs/` goes in
as `cfx_jax.configs` (pyproject.toml, [tool.setuptools]), and the check can fail."""

import importlib.util
import os
import tomllib

import setuptools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_pyproject(path=os.path.join(ROOT, "pyproject.toml")) -> dict:
  with open(path, "rb") as f:
    return tomllib.load(f)


def shipped_packages(pyproject: dict, root: str = ROOT) -> dict[str, str]:
  """Package name -> the folder it is built from, as setuptools reads the config."""
  options = pyproject.get("tool", {}).get("setuptools", {})
  package_dir = options.get("package-dir", {})
  packages = options.get("packages", {"find": {}})
  if isinstance(packages, dict):
    find = packages.get("find", {})
    names = []
    for where in find.get("where", ["."]):
      names += setuptools.find_packages(os.path.join(root, where),
                                        include=find.get("include", ("*",)),
                                        exclude=find.get("exclude", ()))
  else:
    names = list(packages)
  return {name: folder_of(name, package_dir, root) for name in names}


def folder_of(name: str, package_dir: dict[str, str], root: str) -> str:
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    prefix = ".".join(parts[:i])
    if prefix in package_dir:
      return os.path.join(root, package_dir[prefix], *parts[i:])
  return os.path.join(root, package_dir.get("", ""), *parts)


def top_level_problems(packages: dict[str, str]) -> list[str]:
  return sorted(n for n in packages if n.split(".")[0] != "cfx_jax")


def test_only_cfx_jax_is_shipped_at_the_top():
  packages = shipped_packages(read_pyproject())
  assert top_level_problems(packages) == []
  assert packages["cfx_jax.configs"] == os.path.join(ROOT, "configs")


def test_every_package_folder_is_shipped_and_exists():
  packages = shipped_packages(read_pyproject())
  for name, folder in packages.items():
    assert os.path.isfile(os.path.join(folder, "__init__.py")), name
  on_disk = {os.path.relpath(d, ROOT).replace(os.sep, ".")
             for d, _, files in os.walk(os.path.join(ROOT, "cfx_jax")) if "__init__.py" in files}
  assert set(packages) == on_disk | {"cfx_jax.configs"}


def test_a_top_level_configs_package_is_caught():
  # The earlier config shipped the folder as a package of its own.
  old = {"tool": {"setuptools": {"packages": {"find": {"include": ["cfx_jax*", "configs"]}}}}}
  assert top_level_problems(shipped_packages(old)) == ["configs"]
  listed = {"tool": {"setuptools": {"packages": ["cfx_jax", "configs"]}}}
  assert top_level_problems(shipped_packages(listed)) == ["configs"]


def test_the_configs_import_from_the_repository_folder():
  spec = importlib.util.find_spec("cfx_jax.configs")
  assert spec is not None and spec.submodule_search_locations is not None
  assert os.path.join(ROOT, "configs") in [os.path.abspath(p)
                                           for p in spec.submodule_search_locations]
