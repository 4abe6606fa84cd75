"""Query corruptions: each against a plain reference, graded by severity, bad input refused."""

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage

from cfx_jax.data import make_lesions
from cfx_jax.data.corruptions import (CORRUPTIONS, corrupt, gaussian_blur, jpeg_quantise,
                                      quantisation_table)


@pytest.fixture(scope="module")
def images():
  return make_lesions(6, image_size=20, seed=3)["image"]


def test_blur_matches_scipy(images):
  for sigma in (0.6, 0.7, 1.5):
    ref = scipy.ndimage.gaussian_filter(images.astype(np.float64), (0, sigma, sigma, 0),
                                        mode="reflect", truncate=3.0)
    np.testing.assert_allclose(gaussian_blur(images, sigma), ref, atol=1e-12)


def test_jpeg_matches_a_blockwise_dct_loop(images):
  quality = 20
  x = (images.astype(np.float64) + 1) * 127.5 - 128
  x = np.pad(x, [(0, 0), (0, 4), (0, 4), (0, 0)], mode="edge")  # 20 -> 24
  q = quantisation_table(quality)
  ref = np.empty_like(x)
  for n in range(x.shape[0]):
    for c in range(x.shape[3]):
      for i in range(0, 24, 8):
        for j in range(0, 24, 8):
          coeffs = scipy.fft.dctn(x[n, i:i + 8, j:j + 8, c], norm="ortho")
          ref[n, i:i + 8, j:j + 8, c] = scipy.fft.idctn(np.round(coeffs / q) * q, norm="ortho")
  ref = np.clip(np.round(ref[:, :20, :20] + 128), 0, 255) / 127.5 - 1
  np.testing.assert_allclose(jpeg_quantise(images, quality), ref, atol=1e-9)
  # Quality 100 divides by ones: only the rounding to 0..255 integers remains.
  assert np.abs(jpeg_quantise(images, 100) - images).max() <= 2.5 / 127.5


def test_contrast_keeps_each_image_mean_and_scales_its_spread(images):
  out = corrupt(images, "contrast", 2)
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)), atol=1e-5)
  np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 0.4 * images.std(axis=(1, 2, 3)),
                             rtol=1e-4)


def test_noise_has_the_stated_std_and_depends_on_the_seed():
  grey = np.zeros((4, 32, 32, 3), np.float32)
  out = corrupt(grey, "gaussian_noise", 1, seed=0)
  assert abs(out.std() - 0.08) < 0.004
  np.testing.assert_array_equal(out, corrupt(grey, "gaussian_noise", 1, seed=0))
  assert not np.array_equal(out, corrupt(grey, "gaussian_noise", 1, seed=1))


def test_every_corruption_grows_with_severity_and_stays_in_range(images):
  for kind in CORRUPTIONS:
    changes = []
    for severity in (1, 2, 3):
      out = corrupt(images, kind, severity)
      assert out.shape == images.shape and out.dtype == np.float32
      assert out.min() >= -1 and out.max() <= 1
      changes.append(float(np.abs(out - images).mean()))
    assert 0 < changes[0] < changes[1] < changes[2], (kind, changes)


def test_bad_input_is_refused(images):
  with pytest.raises(ValueError, match="unknown corruption 'fog'.*gaussian_noise"):
    corrupt(images, "fog", 1)
  with pytest.raises(ValueError, match="severity must be 1, 2 or 3"):
    corrupt(images, "blur", 4)
  with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
    corrupt(images[0], "blur", 1)
  with pytest.raises(ValueError, match="quality"):
    quantisation_table(0)
