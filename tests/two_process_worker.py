"""One of two processes of a multi-process fit (run by test_scaling.py, not by pytest).

    python tests/two_process_worker.py PORT PROCESS_ID WORKDIR
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402

from cfx_jax.engine import runtime  # noqa: E402


def main():
  port, process_id, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
  c = runtime.runtime_config()
  c.distributed, c.initialization_timeout = True, 60
  c.coordinator_address, c.num_processes, c.process_id = f"127.0.0.1:{port}", 2, process_id
  runtime.setup(c)

  import jax
  assert jax.process_count() == 2 and jax.device_count() == 4  # backend up before conftest
  import cfx_jax
  from conftest import linear_logits, random_images
  from test_scaling import CAE_SETTINGS, STEPS, fit_config

  explainer = cfx_jax.fit_explainer(linear_logits, random_images(32, seed=0), steps=STEPS,
                                    batch_size=8, workdir=workdir, config=fit_config(0))
  leaves = [np.asarray(a) for a in jax.tree.leaves(explainer.gen_params)]
  np.savez(os.path.join(workdir, f"params_{process_id}.npz"), *leaves)
  # A method with its own explainer class saves collectively too (orbax needs every
  # process): the fit returns only once `<workdir>/cae/explainer` is written.
  cfx_jax.fit_explainer(linear_logits, random_images(32, seed=0), method="cae",
                        workdir=os.path.join(workdir, "cae"), config=CAE_SETTINGS)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
