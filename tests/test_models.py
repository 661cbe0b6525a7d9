"""Mechanism tests of `attnwav2lip.models`: official key tables, checkpoint loading, warm start, variants, bad input."""
import hashlib

import pytest
import torch

from attnwav2lip.models import (ATTENTION_PREFIXES, VARIANTS, AttnWav2Lip, ModelConfig, QualityDiscriminator,
                                SyncNetColor, load_checkpoint_weights, warm_start)

SMALL = dict(img_size=48, width=0.25)

# SHA-256 of the official state-dict listings, one "key (shape)" line per entry in state-dict order, as in the
# reference's Appendices A (Wav2Lip), B (SyncNet_color) and C (Wav2Lip_disc_qual).
OFFICIAL = {
    AttnWav2Lip: (352, 36_298_035, 'e4f1ef37a3fc50fac4b37920babfcb3edecbe19416e64dab87a4c953d6e9c021'),
    SyncNetColor: (217, 16_435_072, 'ee015cff0895adc30a40c5884b72e6b7a3bd66da256a1ae2910000fc5a1794aa'),
    QualityDiscriminator: (28, 14_113_793, '195a40bf2937d6a2528fb3e13031205496a1930fdabfebf4ca1805494e8a2662'),
}
SELECTED_SHAPES = {
    AttnWav2Lip: {'face_encoder_blocks.0.0.conv_block.0.weight': (16, 6, 7, 7),
                  'face_encoder_blocks.6.1.conv_block.0.weight': (512, 512, 1, 1),
                  'audio_encoder.12.conv_block.0.weight': (512, 512, 1, 1),
                  'face_decoder_blocks.1.0.conv_block.0.weight': (1024, 512, 3, 3),
                  'face_decoder_blocks.6.2.conv_block.1.running_var': (64,),
                  'output_block.0.conv_block.0.weight': (32, 80, 3, 3),
                  'output_block.1.weight': (3, 32, 1, 1)},
    SyncNetColor: {'face_encoder.0.conv_block.0.weight': (32, 15, 7, 7),
                   'face_encoder.1.conv_block.0.weight': (64, 32, 5, 5),
                   'audio_encoder.11.conv_block.0.weight': (256, 256, 3, 3),
                   'audio_encoder.13.conv_block.0.weight': (512, 512, 1, 1)},
    QualityDiscriminator: {'face_encoder_blocks.1.0.conv_block.0.weight': (64, 32, 5, 5),
                           'binary_pred.0.weight': (1, 512, 1, 1)},
}


def listing_digest(sd):
    return hashlib.sha256("\n".join(f"{k} {tuple(v.shape)}" for k, v in sd.items()).encode()).hexdigest()


def official_checkpoint(model, step=7):
    "The training scripts' checkpoint layout, with DataParallel's `module.` prefix."
    return {'state_dict': {'module.' + k: v for k, v in model.state_dict().items()},
            'optimizer': None, 'global_step': step, 'global_epoch': 1}


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("cls", list(OFFICIAL), ids=lambda c: c.__name__)
def test_official_key_table(cls):
    entries, params, digest = OFFICIAL[cls]
    sd = cls().state_dict()
    assert len(sd) == entries
    assert sum(p.numel() for p in cls().parameters()) == params
    assert listing_digest(sd) == digest
    for k, shape in SELECTED_SHAPES[cls].items():
        assert tuple(sd[k].shape) == shape, k
    assert all(v.dtype == (torch.int64 if k.endswith('num_batches_tracked') else torch.float32) for k, v in sd.items())


@pytest.mark.parametrize("cls", list(OFFICIAL), ids=lambda c: c.__name__)
def test_official_format_loads_strictly(cls, tmp_path):
    torch.manual_seed(1)
    source = cls()
    path = tmp_path / 'checkpoint_step000000007.pth'
    torch.save(official_checkpoint(source), path)
    for src in (path, str(path), official_checkpoint(source), source.state_dict()):
        target = cls()
        load_checkpoint_weights(target, src)
        assert same_weights(source, target)
    assert load_checkpoint_weights(cls(), path)['global_step'] == 7


def test_wrong_network_is_named():
    gen, sync, disc = AttnWav2Lip(ModelConfig(**SMALL)), SyncNetColor(ModelConfig(**SMALL)), QualityDiscriminator(ModelConfig(**SMALL))
    with pytest.raises(ValueError, match="SyncNet_color expert state dict.*generator"):
        load_checkpoint_weights(gen, sync.state_dict())
    with pytest.raises(ValueError, match="visual-quality discriminator state dict"):
        load_checkpoint_weights(sync, official_checkpoint(disc))
    with pytest.raises(ValueError, match="generator .* state dict.*visual-quality"):
        warm_start(disc, gen.state_dict())


def test_other_size_or_variant_is_refused():
    wav2lip = AttnWav2Lip(ModelConfig(**SMALL))
    with pytest.raises(ValueError, match="shape mismatches.*img_size/width"):
        load_checkpoint_weights(AttnWav2Lip(ModelConfig(img_size=48, width=0.5)), wav2lip.state_dict())
    with pytest.raises(ValueError, match="missing keys.*warm_start"):
        load_checkpoint_weights(AttnWav2Lip(ModelConfig(attention='cbam', **SMALL)), wav2lip.state_dict())
    cbam = AttnWav2Lip(ModelConfig(attention='cbam', **SMALL))
    with pytest.raises(ValueError, match="unexpected keys"):
        load_checkpoint_weights(AttnWav2Lip(ModelConfig(**SMALL)), cbam.state_dict())
    relaxed = AttnWav2Lip(ModelConfig(**SMALL))
    load_checkpoint_weights(relaxed, cbam.state_dict(), strict=False)
    assert torch.equal(relaxed.output_block[1].weight, cbam.output_block[1].weight)


def test_unreadable_checkpoints(tmp_path):
    model = QualityDiscriminator(ModelConfig(**SMALL))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_checkpoint_weights(model, tmp_path / 'nowhere.pth')
    (tmp_path / 'junk.pth').write_bytes(b'not a torch file')
    with pytest.raises(ValueError, match="junk.pth"):
        load_checkpoint_weights(model, tmp_path / 'junk.pth')
    torch.save({'global_step': 3}, tmp_path / 'empty.pth')
    with pytest.raises(ValueError, match="empty.pth holds no state dict"):
        load_checkpoint_weights(model, tmp_path / 'empty.pth')


@pytest.mark.parametrize("size", [48, 24])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_forward_backward_cpu(variant, size):
    torch.manual_seed(0)
    g = AttnWav2Lip(ModelConfig(attention=variant, **{**SMALL, "img_size": size}))
    audio, faces = torch.randn(2, 5, 1, 80, 16), torch.rand(2, 6, 5, size, size)
    out = g(audio, faces)
    assert out.shape == (2, 3, 5, size, size) and bool(((out > 0) & (out < 1)).all())
    (out - faces[:, :3]).abs().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.parameters())
    blocks = [] if g.encoder_attention is None else [*g.encoder_attention, *g.decoder_attention]
    assert len(blocks) == (0 if variant == 'none' else 14)
    # every attention block learns (a single hidden ReLU unit of a narrow CAM may be inactive, so not every tensor)
    assert all(sum(p.grad.abs().sum() for p in b.parameters()) > 0 for b in blocks)


def test_window_equals_frames_in_eval_mode():
    g = AttnWav2Lip(ModelConfig(attention='cbam', **SMALL)).eval()
    audio, faces = torch.randn(2, 3, 1, 80, 16), torch.rand(2, 6, 3, 48, 48)
    with torch.no_grad():
        window = g(audio, faces)
        for t in range(3):
            torch.testing.assert_close(window[:, :, t], g(audio[:, t], faces[:, :, t]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_maps(variant):
    g = AttnWav2Lip(ModelConfig(attention=variant, **SMALL))
    with torch.no_grad():
        g(torch.randn(1, 2, 1, 80, 16), torch.rand(1, 6, 2, 48, 48))
    maps = g.attention_maps()
    assert len(maps) == 14
    if variant in ('none', 'channel'):
        assert maps == [None] * 14
        return
    assert [m.shape[-1] for m in maps] == [48, 24, 12, 6, 3, 3, 1, 1, 3, 3, 6, 12, 24, 48]
    assert all(m.shape[:2] == (2, 1) and not m.requires_grad and bool(((m >= 0) & (m <= 1)).all()) for m in maps)


def test_warm_start_report(tmp_path):
    torch.manual_seed(2)
    wav2lip = AttnWav2Lip(ModelConfig(**SMALL))
    torch.save(official_checkpoint(wav2lip), tmp_path / 'wav2lip.pth')
    cbam = AttnWav2Lip(ModelConfig(attention='cbam', **SMALL))
    report = warm_start(cbam, tmp_path / 'wav2lip.pth')
    attention_keys = [k for k in cbam.state_dict() if k.startswith(ATTENTION_PREFIXES)]
    assert report.loaded == len(wav2lip.state_dict()) == 352
    assert report.new_keys == attention_keys and len(attention_keys) == 14 * 6
    assert report.unexpected_keys == []
    assert all(torch.equal(v, cbam.state_dict()[k]) for k, v in wav2lip.state_dict().items())
    assert "loaded 352 keys" in str(report)
    spatial = AttnWav2Lip(ModelConfig(attention='spatial', **SMALL))
    report = warm_start(spatial, cbam.state_dict())
    assert report.new_keys == [] and report.loaded == 352 + 14 * 2
    assert report.unexpected_keys and all('.channel.' in k for k in report.unexpected_keys)
    partial = {k: v for k, v in wav2lip.state_dict().items() if not k.startswith('output_block.')}
    with pytest.raises(ValueError, match="lacks 9 base keys"):
        warm_start(cbam, partial)
    with pytest.raises(ValueError, match="shape mismatches"):
        warm_start(AttnWav2Lip(ModelConfig(attention='cbam', img_size=48, width=0.5)), wav2lip.state_dict())


@pytest.mark.parametrize("size,width", [(48, 0.25), (48, 0.5), (24, 0.25)])
def test_small_expert_and_discriminator(size, width):
    cfg = ModelConfig(img_size=size, width=width)
    sync = SyncNetColor(cfg)
    a, v = sync(torch.randn(3, 1, 80, 16), torch.rand(3, 15, size // 2, size))
    assert a.shape == v.shape == (3, round(512 * width))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    assert bool((a >= 0).all() and (v >= 0).all())
    p = QualityDiscriminator(cfg)(torch.rand(2, 3, 5, size, size))
    assert p.shape == (10, 1) and bool(((p > 0) & (p < 1)).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_discriminator_on_cuda():
    disc = QualityDiscriminator(ModelConfig(**SMALL)).cuda()
    assert disc(torch.rand(1, 3, 5, 48, 48, device='cuda')).device.type == 'cuda'


def test_bad_inputs():
    cfg = ModelConfig(**SMALL)
    with pytest.raises(ValueError, match="face must be"):
        AttnWav2Lip(cfg)(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96))
    with pytest.raises(ValueError, match="audio must be"):
        AttnWav2Lip(cfg)(torch.randn(3, 1, 80, 16), torch.rand(2, 6, 48, 48))
    with pytest.raises(ValueError, match="face must be"):
        SyncNetColor(cfg)(torch.randn(2, 1, 80, 16), torch.rand(2, 15, 48, 96))
    with pytest.raises(ValueError, match="faces must be"):
        QualityDiscriminator(cfg)(torch.rand(2, 3, 96, 96))


def test_config_round_trip_and_validation():
    cfg = ModelConfig(img_size=48, width=0.5, attention='spatial', reduction=8, spatial_kernel=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (dict(img_size=64), dict(width=0.0), dict(width=0.3), dict(attention='cam'), dict(reduction=0),
                dict(spatial_kernel=4)):
        with pytest.raises(ValueError):
            ModelConfig(**bad)
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**cfg.to_dict(), 'depth': 2})
