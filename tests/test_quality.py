"""PSNR, SSIM and FID: closed forms, a reference implementation cross-check, and bad inputs."""
import math

import numpy as np
import pytest

from attnwav2lip.quality import (fid, fid_from_features, frechet_distance, gaussian_stats, gaussian_window, psnr, ssim,
                                 thumbnail_features, video_quality)

RNG = np.random.default_rng(0)
IMG = RNG.integers(20, 230, (40, 48, 3), dtype=np.uint8)


def test_psnr_closed_forms():
    assert psnr(IMG, IMG) == math.inf
    assert psnr(IMG, IMG + 5) == pytest.approx(20 * math.log10(255 / 5), abs=1e-12)
    f = IMG / 255.0
    assert psnr(f, f + 0.1, data_range=1.0) == pytest.approx(20.0, abs=1e-9)
    # one pixel off by d out of N: MSE = d²/N
    b = IMG.copy(); b[0, 0, 0] += 17
    assert psnr(IMG, b) == pytest.approx(10 * math.log10(255 ** 2 / (17 ** 2 / IMG.size)), abs=1e-9)


def test_psnr_ssim_bad_inputs():
    with pytest.raises(ValueError, match="shape"): psnr(IMG, IMG[:10])
    with pytest.raises(ValueError, match="data_range"): psnr(IMG / 255.0, IMG / 255.0)
    with pytest.raises(ValueError, match="at least 11"): ssim(IMG[:10, :10], IMG[:10, :10])
    with pytest.raises(ValueError, match="shape"): ssim(IMG, IMG[..., :2])


def test_ssim_identity_and_constant_offset():
    assert ssim(IMG, IMG) == 1.0
    flat = np.full((20, 20, 3), 60, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(flat, flat + 50) == pytest.approx((2 * 60 * 110 + c1) / (60 ** 2 + 110 ** 2 + c1), abs=1e-12)


def test_ssim_window():
    g = gaussian_window()
    assert g.size == 11 and g.sum() == pytest.approx(1) and np.argmax(g) == 5
    assert g[5] / g[6] == pytest.approx(math.exp(1 / (2 * 1.5 ** 2)))


@pytest.mark.parametrize("channels", [None, 3])
def test_ssim_matches_scikit_image(channels):
    metrics = pytest.importorskip("skimage.metrics")
    shape = (37, 45) if channels is None else (37, 45, channels)
    a = RNG.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a + RNG.normal(0, 25, shape), 0, 255).astype(np.uint8)
    ref = metrics.structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, channel_axis=None if channels is None else -1)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-10)


def test_video_quality():
    a = np.stack([IMG, IMG])
    b = np.stack([IMG + 5, IMG + 10])
    q = video_quality(a, b)
    assert q["n_frames"] == 2
    assert q["psnr"] == pytest.approx((psnr(IMG, IMG + 5) + psnr(IMG, IMG + 10)) / 2)
    assert q["ssim"] == pytest.approx((ssim(IMG, IMG + 5) + ssim(IMG, IMG + 10)) / 2)
    with pytest.raises(ValueError, match="shape"): video_quality(a, b[:1])
    with pytest.raises(ValueError, match="frame sequence"): video_quality(a[:0], b[:0])


def test_frechet_closed_forms():
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 1.0])   # diagonal covariances
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(9 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    with pytest.raises(ValueError, match="incompatible"): frechet_distance(mu1, np.eye(3), mu2[:2], np.eye(2))


def test_fid_from_features_closed_forms():
    f = RNG.normal(size=(300, 5)) @ RNG.normal(size=(5, 5)) + 2
    mu, cov = gaussian_stats(f)
    assert np.allclose(cov, np.cov(f.T)) and np.allclose(mu, f.mean(0))
    c = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert fid_from_features(f, f) == pytest.approx(0, abs=1e-8)
    assert fid_from_features(f, f + c) == pytest.approx((c ** 2).sum(), abs=1e-8)
    assert fid_from_features(f, 0.5 * f) == pytest.approx(0.25 * (mu ** 2).sum() + 0.25 * np.trace(cov), rel=1e-9)
    with pytest.raises(ValueError, match="N ≥ 2"): fid_from_features(f[:1], f)


def test_fid_with_injected_extractor():
    frames = RNG.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)
    calls = []
    def extractor(batch):
        calls.append(len(batch))
        return thumbnail_features(batch, size=4)
    assert fid(frames, frames, extractor, batch_size=8) == pytest.approx(0, abs=1e-8)
    assert calls == [8, 8, 8, 6] * 2
    torch = pytest.importorskip("torch")
    as_tensor = lambda batch: torch.from_numpy(batch.reshape(len(batch), -1)[:, :6].astype(np.float32))
    brighter = np.clip(frames.astype(int) + 20, 0, 255).astype(np.uint8)
    shift = (brighter.reshape(30, -1)[:, :6].astype(float) - frames.reshape(30, -1)[:, :6]).mean(0)
    assert fid(frames, brighter, as_tensor) > 0.9 * (shift ** 2).sum()


def test_thumbnail_features():
    frames = np.zeros((2, 16, 16, 3), np.uint8); frames[1] = 255
    t = thumbnail_features(frames, size=4)
    assert t.shape == (2, 48) and t[0].max() == 0 and t[1].min() == 1
