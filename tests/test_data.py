"""Mechanism tests for `attnwav2lip.data`: index math, seeding, exclusion, shapes, the frame cache, and errors for broken clips."""
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from attnwav2lip.audio import AudioConfig, load_wav, mel_index, melspectrogram
from attnwav2lip.data import (ClipDataset, DataConfig, FrameCache, GeneratorDataset, SyncDataset, _last_audio_frame,
                              clip_frames, read_face, read_filelist, toy_frame_id, window_starts, write_toy_corpus)

CLIPS = {'a/00001': 40, 'a/00002': 30, 'b/00001': 50, 'b/00002': 24}
GAPS = {'b/00001': [10, 33]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_toy_corpus(root, CLIPS, size=96, missing=GAPS, seed=1)
    return root


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def over_epochs(ds, epochs=12):
    "Yield (epoch, index) with `ds` set to that epoch while the caller uses it."
    for e in range(epochs):
        ds.set_epoch(e)
        for k in range(len(ds)):
            yield e, k


# ---------------------------------------------------------------- layout and index math

def test_read_filelist(tmp_path):
    (tmp_path / "train.txt").write_text("a/00001\n\n  b/00002 NF  \r\nb/00003\textra\n")
    assert read_filelist(tmp_path / "train.txt") == ['a/00001', 'b/00002', 'b/00003']
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_filelist(tmp_path / "nope.txt")


def test_window_starts_skip_gaps():
    ids = np.array([0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11])
    assert window_starts(ids, 5).tolist() == [0, 6, 7]
    assert window_starts(ids, 3).tolist() == [0, 1, 2, 6, 7, 8, 9]
    assert window_starts(np.array([3, 4]), 5).tolist() == []


def test_clip_frames_ignores_non_numeric(tmp_path):
    for n in ("3.jpg", "10.jpg", "2.jpg", "thumb.jpg", "4.png"):
        (tmp_path / n).write_bytes(b"")
    assert clip_frames(tmp_path).tolist() == [2, 3, 10]


def test_last_audio_frame_matches_brute_force():
    acfg = AudioConfig()
    for n in range(0, 400):
        brute = max([k for k in range(200) if mel_index(k) + 16 <= n], default=-1)
        assert _last_audio_frame(n, acfg) == brute, n


def test_toy_frame_ids_survive_jpeg_and_resize(corpus):
    for size in (96, 64, 48):
        assert [toy_frame_id(read_face(corpus / 'a/00001' / f'{k}.jpg', size)) for k in range(40)] == list(range(40))


# ---------------------------------------------------------------- construction

def test_exclusion_reasons_and_warning(tmp_path):
    write_toy_corpus(tmp_path, {'s/ok': 16, 's/short': 15, 's/gappy': 20, 's/noaudio': 20},
                     missing={'s/gappy': [4, 8, 12, 16]})
    (tmp_path / 's/noaudio/audio.wav').unlink()
    with pytest.warns(UserWarning, match="4 of 5 clips excluded"):
        ds = ClipDataset(tmp_path, ['s/ok', 's/short', 's/gappy', 's/noaudio', 's/missing'])
    assert ds.clips == ['s/ok']
    assert ds.excluded == {'s/short': 'too few frames (≤ 15)', 's/gappy': 'no 5 consecutive frames',
                           's/noaudio': 'no audio.wav', 's/missing': 'missing folder'}
    assert "4 excluded" in repr(ds)


def test_no_usable_clip_is_an_error(tmp_path):
    (tmp_path / "list.txt").write_text("x/1\ny/2\n")
    with pytest.raises(ValueError, match="list.txt: no usable clip.*missing folder"):
        SyncDataset(tmp_path, tmp_path / "list.txt")


def test_index_is_honoured(corpus):
    ds = GeneratorDataset(corpus, list(CLIPS))
    assert len(ds) == 4 and ds.clips == list(CLIPS)
    for k, clip in enumerate(CLIPS):
        i, s, _ = ds.pick(k)
        assert i == k
        mel = melspectrogram(load_wav(corpus / clip / 'audio.wav'))
        np.testing.assert_array_equal(ds[k][2][0].numpy(), mel[:, mel_index(s):mel_index(s) + 16])
    assert ds.pick(-1) == ds.pick(3)
    with pytest.raises(IndexError):
        ds[4]


# ---------------------------------------------------------------- generator samples

@pytest.mark.parametrize("size", [96, 48])
def test_generator_sample_shapes_and_ranges(corpus, size):
    ds = GeneratorDataset(corpus, list(CLIPS), DataConfig(img_size=size))
    x, indiv, mel, y = ds[0]
    assert x.shape == (6, 5, size, size) and y.shape == (3, 5, size, size)
    assert indiv.shape == (5, 1, 80, 16) and mel.shape == (1, 80, 16)
    assert all(t.dtype == torch.float32 for t in (x, indiv, mel, y))
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(y.max()) > 0.5
    assert -4 <= float(indiv.min()) and float(indiv.max()) <= 4


def test_generator_index_math_mask_and_frames(corpus):
    ds = GeneratorDataset(corpus, list(CLIPS))
    for e, k in over_epochs(ds, 8):
        i, s, w = ds.pick(k)
        x, indiv, mel, y = ds[k]
        full = ds.mel(i)
        assert s >= 1 and w != s
        assert all(np.isin(np.arange(v, v + 5), ds.frame_ids[i]).all() for v in (s, w))
        assert [toy_frame_id(y[:, t]) for t in range(5)] == list(range(s, s + 5))
        assert [toy_frame_id(x[3:, t]) for t in range(5)] == list(range(w, w + 5))
        assert torch.all(x[:3, :, 48:] == 0) and torch.equal(x[:3, :, :48], y[:, :, :48])
        for t, j in enumerate(range(s, s + 5)):        # training convention: frame j -> window of frame j-1
            b = 16 * (j - 1) // 5
            np.testing.assert_array_equal(indiv[t, 0].numpy(), full[:, b:b + 16])
        np.testing.assert_array_equal(mel[0].numpy(), full[:, 16 * s // 5:16 * s // 5 + 16])


def test_generator_values_are_bgr_over_255(corpus):
    ds = GeneratorDataset(corpus, ['a/00001'])
    _, s, _ = ds.pick(0)
    y = ds[0][3]
    img = read_face(corpus / 'a/00001' / f'{s + 2}.jpg', 96)
    np.testing.assert_array_equal(y[:, 2].permute(1, 2, 0).numpy(), (img / 255.).astype(np.float32))


def test_frames_of_another_size_are_resized(tmp_path):
    write_toy_corpus(tmp_path, {'s/c': 20}, size=64)
    x, _, _, y = GeneratorDataset(tmp_path, ['s/c'], DataConfig(img_size=48))[0]
    assert x.shape == (6, 5, 48, 48) and torch.all(x[:3, :, 24:] == 0)


# ---------------------------------------------------------------- expert pairs

def test_sync_sample_shapes_and_stacking(corpus):
    ds = SyncDataset(corpus, list(CLIPS))
    for e, k in over_epochs(ds, 6):
        i, s, f, positive = ds.pick(k)
        face, mel, y = ds[k]
        assert face.shape == (15, 48, 96) and mel.shape == (1, 80, 16) and y.shape == (1,)
        assert float(y) == float(positive) and (f == s) == positive
        assert [toy_frame_id(face[3 * t:3 * t + 3]) for t in range(5)] == list(range(f, f + 5))  # frame-major
        lower = read_face(corpus / ds.clips[i] / f'{f + 4}.jpg', 96)[48:] / 255.
        np.testing.assert_array_equal(face[12:15].permute(1, 2, 0).numpy(), lower.astype(np.float32))
        np.testing.assert_array_equal(mel[0].numpy(), ds.mel(i)[:, 16 * s // 5:16 * s // 5 + 16])  # audio from s


def test_sync_labels_are_balanced_and_official_negatives_may_overlap(corpus):
    ds = SyncDataset(corpus, list(CLIPS))
    picks = [ds.pick(k) for e, k in over_epochs(ds, 50)]
    frac = np.mean([p[3] for p in picks])
    assert 0.4 < frac < 0.6
    gaps = [abs(s - f) for _, s, f, p in picks if not p]
    assert min(gaps) >= 1 and min(gaps) < 5


@pytest.mark.parametrize("min_offset", [3, 10, 15])
def test_sync_negatives_respect_min_offset(corpus, min_offset):
    ds = SyncDataset(corpus, list(CLIPS), DataConfig(min_offset=min_offset))
    picks = [ds.pick(k) for e, k in over_epochs(ds, 40)]
    gaps = [abs(s - f) for _, s, f, p in picks if not p]
    assert len(gaps) > 40 and min(gaps) >= min_offset


def test_sync_min_offset_too_large_is_an_error(corpus):
    ds = SyncDataset(corpus, ['b/00002'], DataConfig(min_offset=30))
    with pytest.raises(ValueError, match="00002: no two complete windows 30 frames apart"):
        ds[0]


# ---------------------------------------------------------------- determinism

def test_deterministic_under_seed_and_epoch(corpus):
    a = GeneratorDataset(corpus, list(CLIPS), DataConfig(seed=7))
    b = GeneratorDataset(corpus, list(CLIPS), DataConfig(seed=7))
    c = GeneratorDataset(corpus, list(CLIPS), DataConfig(seed=8))
    for k in range(4):
        for ta, tb in zip(a[k], b[k]):
            assert torch.equal(ta, tb)
    picks = lambda ds: [ds.pick(k) for e, k in over_epochs(ds, 5)]
    assert picks(a) == picks(b) and picks(a) != picks(c)
    a.set_epoch(0); e0 = [a.pick(k) for k in range(4)]
    a.set_epoch(1); e1 = [a.pick(k) for k in range(4)]
    assert e0 != e1


def test_dataloader_workers_do_not_change_samples(corpus):
    ds = SyncDataset(corpus, list(CLIPS), DataConfig(seed=3))
    ds.set_epoch(2)
    one = [torch.cat([t.flatten(1) for t in b], 1) for b in torch.utils.data.DataLoader(ds, batch_size=2)]
    two = [torch.cat([t.flatten(1) for t in b], 1)
           for b in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)]
    assert all(torch.equal(p, q) for p, q in zip(one, two)) and len(one) == 2


def frame_bytes(size):
    return size * size * 3 + FrameCache.overhead


@pytest.mark.parametrize("cls", [SyncDataset, GeneratorDataset])
def test_frame_cache_gives_identical_samples(corpus, cls):
    plain = cls(corpus, list(CLIPS), DataConfig(img_size=48, cache_bytes=0))
    full = cls(corpus, list(CLIPS), DataConfig(img_size=48))
    tiny = cls(corpus, list(CLIPS), DataConfig(img_size=48, cache_bytes=3 * frame_bytes(48)))
    for e, k in over_epochs(plain, 6):
        full.set_epoch(e); tiny.set_epoch(e)
        want = plain[k]
        for ds in (full, tiny):
            assert all(torch.equal(p, q) for p, q in zip(want, ds[k]))
    assert len(plain.frame_cache) == 0 and plain.frame_cache.nbytes == 0
    assert full.frame_cache.hits > 0 and len(full.frame_cache) > 3 and len(tiny.frame_cache) == 3


def test_frame_cache_never_exceeds_its_limit(corpus):
    limit = 4 * frame_bytes(48) + 100                   # room for four 48 px frames, not five
    ds = GeneratorDataset(corpus, list(CLIPS), DataConfig(img_size=48, cache_bytes=limit))
    cache, full = ds.frame_cache, False
    for e, k in over_epochs(ds, 10):
        ds[k]
        assert cache.nbytes <= limit and len(cache) <= 4
        assert cache.nbytes == sum(img.nbytes + FrameCache.overhead for img in cache._frames.values())
        full |= len(cache) == 4
    assert full and cache.misses > 10 * len(ds) * 2 * 5 // 2   # it evicted: most reads decoded again


def test_frame_cache_evicts_least_recently_used(corpus):
    ds = ClipDataset(corpus, list(CLIPS), DataConfig(img_size=48, cache_bytes=3 * frame_bytes(48)))
    for f in (0, 1, 2, 0, 3):                           # frame 0 read again, so 1 is the oldest when 3 arrives
        ds.face(0, f)
    assert ds.frame_cache.keys() == [(0, 2), (0, 0), (0, 3)]
    assert (ds.frame_cache.hits, ds.frame_cache.misses) == (1, 4)
    ds.face(1, 5)
    assert ds.frame_cache.keys() == [(0, 0), (0, 3), (1, 5)]


def test_frame_cache_mechanics():
    img = lambda v, s=48: np.full((s, s, 3), v, np.uint8)
    cache = FrameCache(2 * frame_bytes(48))
    cache.put('a', img(1)); cache.put('b', img(2))
    cache.put('a', img(3))                              # replacing an entry charges it once
    assert cache.keys() == ['b', 'a'] and cache.nbytes == 2 * frame_bytes(48) and cache.get('a')[0, 0, 0] == 3
    big = cache.put('big', img(4, 96))                  # larger than the whole limit: returned, not kept
    assert 'big' not in cache and big.flags.writeable and cache.keys() == ['b', 'a']
    assert not cache.get('b').flags.writeable           # cached frames are read-only
    assert cache.get('nope') is None and (cache.hits, cache.misses) == (2, 1)
    none = FrameCache(0)
    assert none.put('a', img(1))[0, 0, 0] == 1 and len(none) == 0 and none.nbytes == 0
    with pytest.raises(ValueError, match="cache_bytes must be >= 0"):
        DataConfig(cache_bytes=-1)


def test_default_cache_holds_a_small_corpus(corpus):
    ds = SyncDataset(corpus, list(CLIPS), DataConfig(img_size=48))
    frames = sum(len(ids) for ids in ds.frame_ids)
    for i, ids in enumerate(ds.frame_ids):
        for f in ids:
            ds.face(i, int(f))
    assert len(ds.frame_cache) == frames and ds.frame_cache.nbytes == frames * frame_bytes(48)


def test_mel_cache_is_bounded(corpus):
    ds = SyncDataset(corpus, list(CLIPS), DataConfig(mel_cache=2))
    for k in range(4):
        ds[k]
    assert list(ds._mels) == [2, 3]


# ---------------------------------------------------------------- broken samples

@pytest.fixture
def clip(tmp_path):
    write_toy_corpus(tmp_path, {'s/c': 24})
    return tmp_path


def first_error(ds, exc=Exception, epochs=40):
    for e in range(epochs):
        ds.set_epoch(e)
        try:
            ds[0]
        except exc as err:
            return err
    raise AssertionError("no sample failed")


def test_missing_frame_after_scan_names_the_file(clip):
    ds = GeneratorDataset(clip, ['s/c'])
    (clip / 's/c/9.jpg').unlink()
    err = first_error(ds, FileNotFoundError)
    assert "s/c/9.jpg: missing frame" in str(err)


@pytest.mark.parametrize("cls", [SyncDataset, GeneratorDataset])
def test_unreadable_jpg_names_the_file(clip, cls):
    (clip / 's/c/11.jpg').write_bytes(b'\xff\xd8 truncated')
    err = first_error(cls(clip, ['s/c']), ValueError)
    assert "s/c/11.jpg: unreadable image" in str(err)


@pytest.mark.parametrize("seconds,msg", [(0.3, "audio too short"), (0.1, "audio is too short")])
def test_audio_too_short_names_the_file(clip, seconds, msg):
    sf.write(clip / 's/c/audio.wav', np.full(int(16000 * seconds), 0.1, np.float32), 16000)
    with pytest.raises(ValueError, match=f"s/c/audio.wav.*{msg}"):
        GeneratorDataset(clip, ['s/c'])[0]


def test_silent_and_nan_audio_name_the_file(clip):
    sf.write(clip / 's/c/audio.wav', np.zeros(16000, np.float32), 16000)
    with pytest.raises(ValueError, match="s/c/audio.wav.*silent"):
        SyncDataset(clip, ['s/c'])[0]
    sf.write(clip / 's/c/audio.wav', np.full(16000, np.nan, np.float32), 16000, subtype='FLOAT')
    with pytest.raises(ValueError, match="s/c/audio.wav.*NaN"):
        SyncDataset(clip, ['s/c'])[0]


def test_positions_stay_inside_partial_audio(clip):
    sf.write(clip / 's/c/audio.wav', 0.1 * np.sin(np.arange(8000)), 16000)   # 0.5 s: covers frames 0..12 only
    gen, sync = GeneratorDataset(clip, ['s/c']), SyncDataset(clip, ['s/c'])
    last = _last_audio_frame(gen.mel(0).shape[1], AudioConfig())
    gen_s = {gen.pick(0)[1] for e, k in over_epochs(gen, 60)}
    sync_s = {sync.pick(0)[1] for e, k in over_epochs(sync, 60)}
    assert max(gen_s) == last - 3 and min(gen_s) == 1
    assert max(sync_s) == last and min(sync_s) == 0
