"""The `cfx-jax` command line, run in-process."""

import json
import os
import subprocess
import sys
import textwrap

import matplotlib.image
import numpy as np
import pytest
from conftest import random_images

from cfx_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A classifier factory as a user writes one: a module in the current directory.
CLASSIFIER_MODULE = textwrap.dedent("""\
    import jax.numpy as jnp


    def make():
      def logits(images):
        s = 200.0 * jnp.mean(images[:, 4:8, 4:8, :], axis=(1, 2, 3)) + 0.05
        return jnp.stack([jnp.zeros_like(s), s], axis=-1)
      return logits


    def needs_images(images):
      return images
    """)


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
  (tmp_path / "cli_user_classifier.py").write_text(CLASSIFIER_MODULE)
  np.save(tmp_path / "x.npy", random_images(16))
  monkeypatch.chdir(tmp_path)
  return tmp_path


def test_explain_writes_the_report_figure_and_arrays(user_dir, capsys):
  rc = cli.main(["explain", "--classifier", "cli_user_classifier:make", "--images", "x.npy",
                 "--method", "fido", "--set", "steps=2", "--set", "samples=2",
                 "--set", "warn_failures=False", "--set", "progress=False", "--out", "out"])
  assert rc == 0
  out = user_dir / "out"
  for name in ("report.md", "explanations.png", "explanations.npz", "metrics.json"):
    assert os.path.getsize(out / name) > 0, name
  arrays = np.load(out / "explanations.npz")
  assert arrays["maps"].shape == (16, 16, 16)
  assert arrays["counterfactual"].shape == (16, 16, 16, 3)
  assert arrays["target"].shape == (16,) and arrays["probs"].shape == (16, 2)
  text = (out / "report.md").read_text()
  assert "fido" in text and "explanations.png" in text
  assert 0.0 <= json.loads((out / "metrics.json").read_text())["counterfactual"]["flip_rate"] <= 1
  assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["leaderboard"], ["explain"]])
def test_help(command, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([*command, "--help"])
  assert e.value.code == 0
  assert capsys.readouterr().out.startswith(" ".join(["usage: cfx-jax", *command]))


def test_help_does_not_import_jax():
  # In a fresh process: the suite has imported JAX long before.
  code = textwrap.dedent("""\
      import sys
      from cfx_jax import cli
      for command in ([], ["train"], ["evaluate"], ["leaderboard"], ["explain"]):
        try:
          cli.main([*command, "--help"])
        except SystemExit as e:
          assert e.code == 0, e.code
      heavy = {m.split(".")[0] for m in sys.modules} & {"jax", "flax", "matplotlib"}
      assert not heavy, f"--help imported {sorted(heavy)}"
      """)
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=60)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "usage: cfx-jax explain" in done.stdout


@pytest.mark.parametrize("spec, message", [
    ("cli_user_classifier.make", "must be 'package.module:function'"),
    ("no_such_module_xyz:make", "no module named 'no_such_module_xyz'"),
    ("cli_user_classifier:absent", "has no attribute 'absent'"),
    ("cli_user_classifier:needs_images", "must take no arguments"),
])
def test_a_bad_classifier_is_named_in_one_line(user_dir, capsys, spec, message):
  rc = cli.main(["explain", "--classifier", spec, "--images", "x.npy", "--out", "out"])
  err = capsys.readouterr().err
  assert rc == 2 and message in err and "Traceback" not in err
  assert not (user_dir / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--config", "lesions_syce", "--config.explainer.stepz=3"],
     "unknown setting explainer.stepz; did you mean explainer.steps?"),
    (["train", "--config", "lesions_syce", "--config.explainer.steps=abc"],
     "--config.explainer.steps=abc: invalid literal for int()"),
    (["evaluate", "--config", "lesions_leaderboard", "--config.nosuch.x=1"],
     "unknown setting nosuch.x; the config has "),
    (["train", "--config", "lesions_syce:huge"], "unknown preset 'huge'"),
    (["train", "--config", "lesions_syce", "--config.explainer.steps", "5", "stray"],
     "unexpected argument 'stray'"),
])
def test_a_bad_setting_is_named_in_one_line(tmp_path, capsys, args, message):
  workdir = tmp_path / "run"
  assert cli.main([*args[:3], "--workdir", str(workdir), *args[3:]]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"cfx-jax {args[0]}: error: ") and message in err, err
  assert err.count("\n") == 1 and "Traceback" not in err
  assert not workdir.exists()


@pytest.mark.parametrize("args, message", [
    (["--images", "absent.npy"], "--images 'absent.npy' does not exist"),
    (["--method", "nosuch"], "--method 'nosuch' is not a method; choose from cae, "),
    (["--steps", "0"], "steps must be >= 1, got 0 (--debug shows the traceback)"),
])
def test_a_bad_explain_argument_is_named_in_one_line(user_dir, capsys, args, message):
  base = ["explain", "--classifier", "cli_user_classifier:make", "--images", "x.npy"]
  assert cli.main([*base, "--out", "out", *args]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
  from cfx_jax.engine import runtime
  from cfx_jax.jobs import train

  errors = iter([ValueError("learning_rate must be > 0"), KeyError("a bug"),
                 ValueError("learning_rate must be > 0")])

  def job(config, workdir):
    raise next(errors)

  monkeypatch.setattr(train, "train_and_evaluate", job)
  monkeypatch.setattr(runtime, "setup", lambda c: None)
  args = ["train", "--config", "lesions_syce", "--workdir", str(tmp_path)]
  assert cli.main(args) == 2
  assert "error: learning_rate must be > 0 (--debug shows" in capsys.readouterr().err
  with pytest.raises(KeyError, match="a bug"):
    cli.main(args)
  with pytest.raises(ValueError, match="learning_rate"):
    cli.main([*args, "--debug"])


def test_images_from_npz_and_png_folders(tmp_path):
  x = random_images(3)
  np.savez(tmp_path / "named.npz", images=x, labels=np.zeros(3))
  np.savez(tmp_path / "only.npz", pictures=x)
  np.savez(tmp_path / "ambiguous.npz", a=x, b=x)
  np.testing.assert_array_equal(cli.load_images(str(tmp_path / "named.npz")), x)
  np.testing.assert_array_equal(cli.load_images(str(tmp_path / "only.npz")), x)
  with pytest.raises(cli.CliError, match="'image' or 'images'"):
    cli.load_images(str(tmp_path / "ambiguous.npz"))
  folder = tmp_path / "pngs"
  folder.mkdir()
  for i, image in enumerate(x):
    matplotlib.image.imsave(folder / f"{i}.png", (image + 1) / 2)
  png = cli.load_images(str(folder))
  assert png.shape == x.shape and png.dtype == np.float32
  np.testing.assert_allclose(png, x, atol=1 / 127)
  np.testing.assert_allclose(cli.load_images(str(folder), (0.0, 255.0)), (x + 1) * 127.5,
                             atol=1.01)


def test_configs_by_name_or_path_with_overrides():
  by_name = cli.load_config("lesions_syce", ["--config.explainer.steps=7"])
  assert by_name.explainer.steps == 7 and by_name.explainer.method == "syce"
  assert cli.resolve_config("configs/lesions_syce.py").endswith("lesions_syce.py")
  with pytest.raises(cli.CliError, match="shipped: .*lesions_syce"):
    cli.resolve_config("no_such_config")
  with pytest.raises(cli.CliError, match="stepz"):
    cli.load_config("lesions_syce", ["--config.explainer.stepz=7"])
  # The config string picks the network widths.
  paper = cli.load_config("configs/lesions_syce.py:paper", [])
  assert tuple(paper.explainer.model.gen_features) == (64, 128, 256, 512)
  assert tuple(cli.load_config("fashion_ten_classes:paper", []).explainer.model.disc_features) == (
      64, 128, 256, 512)
  with pytest.raises(cli.CliError, match="unknown preset 'huge'"):
    cli.load_config("lesions_syce:huge", [])
  # A leaderboard's "every method" (None) can be narrowed from the command line.
  board = cli.load_config("lesions_leaderboard", [])
  assert board.trained.methods is None and board.baselines.methods is None
  one = cli.load_config("lesions_leaderboard", ["--config.trained.methods=('disc',)",
                                                "--config.baselines.methods=()"])
  assert tuple(one.trained.methods) == ("disc",) and tuple(one.baselines.methods) == ()


def test_leaderboard_prints_the_tables(tmp_path, capsys):
  score = {"mean": 0.9, "ci95": 0.01, "n": 4}
  result = {"dataset": "lesions", "num_images": 4, "methods": {
      "gradient": {"kind": "baseline", "num_images": 4,
                   "scores": {"pixel_auroc": score,
                              "deletion_auc": {"mean": None, "ci95": None, "n": 0}}}}}
  (tmp_path / "leaderboard.json").write_text(json.dumps(result))
  assert cli.main(["leaderboard", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "| gradient | baseline | 4 | 0.900 ± 0.010 |" in out and "—" in out
  assert cli.main(["leaderboard", str(tmp_path / "absent")]) == 2


class _Stop(Exception):
  """Ends a command once fit_explainer has seen its arguments."""


def test_outputs_and_value_range_reach_fit_explainer(user_dir, monkeypatch):
  calls = []

  def fit_explainer(classifier, images, *, method, steps, batch_size, seed, workdir, config,
                    **kwargs):
    calls.append(kwargs)
    raise _Stop

  monkeypatch.setattr(cli.cfx_jax, "fit_explainer", fit_explainer)
  args = ["explain", "--classifier", "cli_user_classifier:make", "--images", "x.npy",
          "--out", "out"]
  for extra in ([], ["--outputs", "probabilities", "--value-range", "-1", "1"]):
    with pytest.raises(_Stop):
      cli.main(args + extra)
  assert calls == [{"outputs": "logits", "value_range": None},
                   {"outputs": "probabilities", "value_range": (-1.0, 1.0)}]


# Runs a command module (`train.evaluate`, `cfx_jax.cli evaluate`) whose job receives
# SIGTERM at its first step, as a scheduler's preemption would deliver it.
PREEMPTED_JOB = textwrap.dedent("""\
    import os, runpy, signal, sys
    from cfx_jax.engine.preemption import Preemption
    from cfx_jax.jobs import leaderboard

    def run_leaderboard(config, workdir):
      stop = Preemption()
      os.kill(os.getpid(), signal.SIGTERM)
      stop.checkpoint_or_stop(None, 1, 10, 5, None, None)

    leaderboard.run_leaderboard = run_leaderboard
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    """)


@pytest.mark.parametrize("command", [["train.evaluate"], ["cfx_jax.cli", "evaluate"]])
def test_a_preempted_evaluate_exits_75(tmp_path, command):
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("XLA_FLAGS", None)
  args = ["--config", "configs/lesions_leaderboard.py", "--workdir", str(tmp_path)]
  done = subprocess.run([sys.executable, "-c", PREEMPTED_JOB, *command, *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 75, done.stdout[-2000:] + done.stderr[-3000:]
  assert "preempted: stopped by SIGTERM after saving step 1" in done.stdout
  assert "Traceback" not in done.stderr
