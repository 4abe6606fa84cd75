"""The import layers (pyproject.toml, [tool.importlinter]) hold, and the check can fail."""

import logging
import os
import textwrap

import pytest
from importlinter.cli import lint_imports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def keep_loggers_enabled():
  """lint_imports configures logging with dictConfig, which disables every logger that
  exists (the library's among them) for the rest of the worker's tests."""
  loggers = [lg for lg in logging.root.manager.loggerDict.values()
             if isinstance(lg, logging.Logger)]
  before = [lg.disabled for lg in loggers]
  yield
  for lg, disabled in zip(loggers, before):
    lg.disabled = disabled


def test_imports_only_go_down(monkeypatch):
  monkeypatch.chdir(ROOT)
  assert lint_imports(config_filename=os.path.join(ROOT, "pyproject.toml"), no_cache=True,
                      no_logo=True) == 0


def test_an_upward_import_breaks_the_contract(tmp_path, monkeypatch):
  # The same package against the layers in reverse order: the methods import the
  # engine and the models, so the check must fail.
  config = tmp_path / "upside_down.ini"
  config.write_text(textwrap.dedent("""\
      [importlinter]
      root_package = cfx_jax

      [importlinter:contract:reversed]
      name = reversed layers
      type = layers
      layers =
          cfx_jax.models
          cfx_jax.engine
          cfx_jax.methods
      """))
  monkeypatch.chdir(ROOT)
  assert lint_imports(config_filename=str(config), no_cache=True, no_logo=True) == 1
