"""Face detectors, S3FD architecture/decoding, provided boxes and box-track post-processing."""
import json

import numpy as np
import pytest
import torch
from skimage import data as skdata

from attnwav2lip.faces import (S3FD, BlazeFaceDetector, ProvidedBoxes, S3FDDetector, array_to_boxes, blazeface_anchors,
                               box_iou, crop_face, default_device, detection_recall, get_detector, interpolate_boxes,
                               letterbox, load_s3fd, nms, pad_box, read_boxes, s3fd_decode, smooth_boxes,
                               smooth_boxes_wav2lip, weighted_nms)

ASTRONAUT = np.ascontiguousarray(skdata.astronaut()[..., ::-1])  # BGR
ASTRONAUT_FACE = (180, 82, 274, 176)  # hand-checked face box (x1, y1, x2, y2)


@pytest.fixture(scope="module")
def blazeface():
    return BlazeFaceDetector()


# --- BlazeFace ---------------------------------------------------------------------------------------------------

def test_blazeface_finds_the_astronaut(blazeface):
    (box,) = blazeface.detect([ASTRONAUT])
    assert box is not None and box[4] > 0.8
    assert box_iou(box, ASTRONAUT_FACE) > 0.8


def test_blazeface_keypoints_inside_the_face(blazeface):
    det = blazeface.detect_all(ASTRONAUT)
    assert det.shape == (1, 17)
    kps = det[0, 5:].reshape(6, 2)
    eyes, nose, mouth = kps[:2], kps[2], kps[3]
    assert (eyes[:, 1] < nose[1]).all() and nose[1] < mouth[1]  # eyes above the nose above the mouth
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert ((kps[:4, 0] > x1) & (kps[:4, 0] < x2) & (kps[:4, 1] > y1) & (kps[:4, 1] < y2)).all()


def test_blazeface_letterbox_maps_boxes_back(blazeface):
    """The same face in a wide, a tall and a padded frame lands on the same frame pixels."""
    full = blazeface.detect([ASTRONAUT])[0]
    tall = blazeface.detect([ASTRONAUT[:, 100:380]])[0]
    wide = blazeface.detect([ASTRONAUT[40:260]])[0]
    np.testing.assert_allclose(np.array(tall[:4]) + [100, 0, 100, 0], full[:4], atol=6)
    np.testing.assert_allclose(np.array(wide[:4]) + [0, 40, 0, 40], full[:4], atol=6)


def test_blazeface_no_face_and_input_checks(blazeface):
    assert blazeface.detect(np.zeros((2, 64, 96, 3), np.uint8)) == [None, None]
    assert len(blazeface.detect(ASTRONAUT)) == 1  # a single (H, W, 3) frame is accepted
    with pytest.raises(ValueError, match="uint8"):
        blazeface.detect([ASTRONAUT.astype(np.float32)])
    with pytest.raises(FileNotFoundError, match="BlazeFace weights not found"):
        BlazeFaceDetector(weights="/nonexistent/model.tflite")


def test_blazeface_anchor_layout():
    a = blazeface_anchors()
    assert a.shape == (896, 2)
    assert len(np.unique(a[:512], axis=0)) == 256 and len(np.unique(a[512:], axis=0)) == 64
    canvas, scale, (px, py) = letterbox(np.zeros((100, 200, 3), np.uint8))
    assert canvas.shape == (128, 128, 3) and scale == 128 / 200 and (px, py) == (0, 32)


def test_weighted_nms_merges_clusters():
    d = np.array([[0, 0, 10, 10, .5], [0, 0, 12, 12, .5], [30, 30, 40, 40, .9]], float)
    out = weighted_nms(d)
    assert out[:, 4].tolist() == [.9, .5]
    np.testing.assert_allclose(out[1, :4], [0, 0, 11, 11])
    assert weighted_nms(np.zeros((0, 5))).shape == (0, 5)


# --- S3FD ----------------------------------------------------------------------------------------------------------

S3FD_SHAPES = {  # wav2lip.md Appendix D
    **{f"conv{n}.weight": s for n, s in [
        ("1_1", (64, 3, 3, 3)), ("1_2", (64, 64, 3, 3)), ("2_1", (128, 64, 3, 3)), ("2_2", (128, 128, 3, 3)),
        ("3_1", (256, 128, 3, 3)), ("3_2", (256, 256, 3, 3)), ("3_3", (256, 256, 3, 3)), ("4_1", (512, 256, 3, 3)),
        ("4_2", (512, 512, 3, 3)), ("4_3", (512, 512, 3, 3)), ("5_1", (512, 512, 3, 3)), ("5_2", (512, 512, 3, 3)),
        ("5_3", (512, 512, 3, 3)), ("6_1", (256, 1024, 1, 1)), ("6_2", (512, 256, 3, 3)), ("7_1", (128, 512, 1, 1)),
        ("7_2", (256, 128, 3, 3))]},
    "fc6.weight": (1024, 512, 3, 3), "fc7.weight": (1024, 1024, 1, 1),
    "conv3_3_norm.weight": (256,), "conv4_3_norm.weight": (512,), "conv5_3_norm.weight": (512,),
    **{f"{h}_mbox_{k}.weight": (n if k == "conf" else 4, c, 3, 3)
       for h, c, n in [("conv3_3_norm", 256, 4), ("conv4_3_norm", 512, 2), ("conv5_3_norm", 512, 2),
                       ("fc7", 1024, 2), ("conv6_2", 512, 2), ("conv7_2", 256, 2)] for k in ("conf", "loc")},
}


@pytest.fixture(scope="module")
def s3fd_net():
    torch.manual_seed(0)
    return S3FD()


def test_s3fd_state_dict_matches_s3fd_pth(s3fd_net):
    sd = s3fd_net.state_dict()
    assert len(sd) == 65
    weights = {k: tuple(v.shape) for k, v in sd.items() if k.endswith("weight")}
    assert weights == S3FD_SHAPES
    for k, v in sd.items():
        if k.endswith("bias"): assert tuple(v.shape) == (S3FD_SHAPES[k.replace("bias", "weight")][0],)
    assert sum(p.numel() for p in s3fd_net.parameters()) == 22_459_110
    assert s3fd_net.fc6.padding == (3, 3) and s3fd_net.fc6.dilation == (1, 1)
    for name, scale in [("conv3_3_norm", 10), ("conv4_3_norm", 8), ("conv5_3_norm", 5)]:
        assert (getattr(s3fd_net, name).weight == scale).all()


def test_s3fd_forward_shapes(s3fd_net):
    with torch.no_grad():
        out = s3fd_net(torch.randn(2, 3, 64, 64))
    assert len(out) == 12
    assert [tuple(o.shape[1:]) for o in out[::2]] == [(2, 16, 16), (2, 8, 8), (2, 4, 4), (2, 6, 6), (2, 3, 3), (2, 2, 2)]
    assert all(o.shape[1] == 4 for o in out[1::2]) and all(torch.isfinite(o).all() for o in out)


def _fake(cells, size=128, batch=1):
    """S3FD outputs that are background everywhere except `cells`: (image, scale, row, col, face_logit, loc)."""
    outs = []
    for i in range(6):
        g = size // 2 ** (i + 2)
        cls = torch.zeros(batch, 2, g, g)
        cls[:, 0] = 10.0
        reg = torch.zeros(batch, 4, g, g)
        for b, s, h, w, logit, loc in cells:
            if s == i:
                cls[b, 1, h, w] = logit
                reg[b, :, h, w] = torch.tensor(loc, dtype=torch.float32)
        outs += [cls, reg]
    return outs


def test_s3fd_decode_prior_and_variances():
    # stride 4 (scale 0), cell (row 3, col 2): prior centre (2 + 8, 2 + 12) = (10, 14), size 16
    assert s3fd_decode(_fake([(0, 0, 3, 2, 20., (0, 0, 0, 0))]))[0][:4] == (2., 6., 18., 22.)
    # stride 32 (scale 3), cell (1, 1): centre (48, 48), size 128; loc (−2, 0, 0, 0) → cx = 48 − 0.1·2·128 = 22.4
    box = s3fd_decode(_fake([(0, 3, 1, 1, 20., (-2, 0, 0, 0))]))[0]
    assert box[:4] == (0., 0., 86., 112.)  # x1 = 22.4 − 64 and y1 = 48 − 64 are clipped to 0; x2 = int(86.4)
    assert box[4] > 0.99


def test_s3fd_decode_thresholds_nms_and_batch():
    logit = lambda p: float(np.log(p / (1 - p)) + 10.0)  # face prob p against a background logit of 10
    cells = [(0, 1, 5, 5, logit(0.9), (0, 0, 0, 0)),   # best
             (0, 1, 5, 6, logit(0.8), (0, 0, 0, 0)),   # IoU with best > 0.3 → suppressed
             (0, 1, 1, 1, logit(0.7), (0, 0, 0, 0)),   # separate face, second
             (1, 2, 2, 2, logit(0.45), (0, 0, 0, 0))]  # image 1: only a weak box (≤ 0.5) → None
    res = s3fd_decode(_fake(cells, batch=3))
    assert res[0][:4] == (28., 28., 60., 60.) and abs(res[0][4] - 0.9) < 1e-5
    assert res[1] is None and res[2] is None


def test_nms_plus_one_convention():
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [100, 100, 110, 110]], float)
    # +1 areas: 100 each, intersection 5×10 = 50 → IoU 1/3 > 0.3 → suppressed
    assert nms(boxes, np.array([.9, .8, .7]), 0.3).tolist() == [0, 2]
    assert nms(boxes, np.array([.9, .8, .7]), 0.34).tolist() == [0, 1, 2]


def test_s3fd_detector_loading_batching_and_downscale(tmp_path, s3fd_net, monkeypatch):
    path = tmp_path / "s3fd.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in s3fd_net.state_dict().items()}}, path)
    det = S3FDDetector(path, batch_size=2, max_side=64)
    assert det.device == default_device() == torch.device("cpu")
    seen = []

    def fake_net(x):  # one face at stride 8, cell (2, 3) → box (12, 4, 44, 36) at the network's resolution
        seen.append(tuple(x.shape))
        return _fake([(b, 1, 2, 3, 20., (0, 0, 0, 0)) for b in range(x.shape[0])], size=x.shape[-1], batch=x.shape[0])

    monkeypatch.setattr(det, "net", fake_net)
    frames = [np.zeros((128, 128, 3), np.uint8)] * 3 + [np.zeros((64, 64, 3), np.uint8)]
    boxes = det.detect(frames)
    assert seen == [(2, 3, 64, 64), (1, 3, 64, 64), (1, 3, 64, 64)]  # batches of ≤ 2 frames of one size
    assert [b[:4] for b in boxes[:3]] == [(24., 8., 88., 72.)] * 3  # 128² frames were halved: boxes scaled back ×2
    assert boxes[3][:4] == (12., 4., 44., 36.)


def test_s3fd_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="S3FD weights not found"):
        load_s3fd(tmp_path / "s3fd.pth")
    torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not an S3FD state dict"):
        load_s3fd(tmp_path / "bad.pth")
    with pytest.raises(TypeError):
        get_detector("s3fd")  # weights_path is required


# --- provided boxes and the registry -------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    [[1, 2, 3, 4], None],
    {"face_boxes": [[1, 2, 3, 4], None]},
    {"frames": [{"face_box": [1, 2, 3, 4]}, {"face_box": None}]},
    [{"face_box": [1, 2, 3, 4]}, {"phonemes": []}],
])
def test_read_boxes_json_variants(tmp_path, payload):
    (tmp_path / "c.json").write_text(json.dumps(payload))
    assert read_boxes(tmp_path / "c.json") == [(1., 2., 3., 4., 1.), None]


def test_read_boxes_arrays_and_errors(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[0, 0, 4, 4, .5], [np.nan] * 5]))
    assert read_boxes(tmp_path / "a.npy") == [(0., 0., 4., 4., .5), None]
    np.savez(tmp_path / "b.npz", face_boxes=np.array([[0, 0, 4, 4]]), other=np.zeros(3))
    assert read_boxes(tmp_path / "b.npz") == [(0., 0., 4., 4., 1.)]
    with pytest.raises(FileNotFoundError, match="face box file not found"):
        read_boxes(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        read_boxes(tmp_path / "bad.json")
    (tmp_path / "nokey.json").write_text(json.dumps({"phonemes": []}))
    with pytest.raises(ValueError, match="no face boxes"):
        read_boxes(tmp_path / "nokey.json")
    with pytest.raises(ValueError, match="4 or 5 numbers"):
        read_boxes([[1, 2, 3]])


def test_provided_boxes_and_registry(tmp_path):
    det = get_detector("boxes", source=[[0, 0, 8, 8]])
    assert isinstance(det, ProvidedBoxes)
    assert det.detect(np.zeros((2, 8, 8, 3), np.uint8)) == [(0., 0., 8., 8., 1.), None]
    assert isinstance(get_detector(), BlazeFaceDetector)
    with pytest.raises(ValueError, match="unknown face detector"):
        get_detector("mtcnn")


# --- tracks --------------------------------------------------------------------------------------------------------

def test_smoothing_is_centred():
    impulse = [(0., 0., 10., 10.)] * 9
    impulse[4] = (10., 0., 20., 10.)
    xs = [b[0] for b in smooth_boxes(impulse, 5)]
    np.testing.assert_allclose(xs, xs[::-1])  # symmetric response to a symmetric input
    assert xs[2] == xs[6] == 2.0 and xs[0] == 0.0
    ramp = [(float(i), 0., i + 10., 10.) for i in range(20)]
    np.testing.assert_allclose([b[0] for b in smooth_boxes(ramp, 5)][2:-2], np.arange(2, 18))  # no lag
    official = smooth_boxes_wav2lip(ramp, 5)[:, 0]
    np.testing.assert_array_equal(official[:15], np.arange(2, 17))  # Wav2Lip's window leads by 2 frames
    assert smooth_boxes(ramp, 1) == array_to_boxes(np.c_[np.array(ramp), np.ones(20)])


def test_smoothing_keeps_gaps():
    track = [(0, 0, 4, 4), None, (2, 2, 6, 6), (4, 4, 8, 8)]
    out = smooth_boxes(track, 3)
    assert out[1] is None and out[0][:4] == (0., 0., 4., 4.) and out[2][:4] == (3., 3., 7., 7.)


def test_wav2lip_smoothing_quirks():
    # fewer boxes than the window: the tail slice starts at len − T < 0 → the last 2 boxes for 3 boxes
    np.testing.assert_array_equal(smooth_boxes_wav2lip([(0, 0, 0, 0), (2, 2, 2, 2), (5, 5, 5, 5)], 5),
                                  [[3] * 4, [3] * 4, [4] * 4])  # in place: the last window is (3, 5) → 4


def test_interpolation_only_fills_short_interior_gaps():
    track = [None, (0, 0, 10, 10), None, None, None, (40, 0, 50, 10), None]
    out, filled = interpolate_boxes(track, max_gap=3)
    assert filled == [2, 3, 4] and out[0] is None and out[-1] is None
    np.testing.assert_allclose([b[0] for b in out[1:6]], [0, 10, 20, 30, 40])
    assert out[3][4] == 0.0  # filled boxes carry score 0
    assert interpolate_boxes(track, max_gap=2)[1] == []


def test_pads_clip_to_frame():
    assert pad_box((10, 10, 50, 50), (0, 10, 0, 0), (100, 100)) == (10, 10, 50, 60)
    assert pad_box((10, 10, 50, 95), (20, 10, 15, 60), (100, 80)) == (0, 0, 80, 100)
    assert pad_box((-5.4, -3, 120.6, 50), (0, 0, 0, 0), (60, 100, 3)) == (0, 0, 100, 50)


def test_crop_face():
    frame = np.arange(100 * 80 * 3, dtype=np.uint8).reshape(100, 80, 3)
    assert crop_face(frame, (10, 20, 50, 90), 48).shape == (48, 48, 3)
    with pytest.raises(ValueError, match="empty face crop"):
        crop_face(frame, (50, 20, 50, 90), 48)


def test_detection_recall_counts():
    r = detection_recall([(0, 0, 10, 10), None], [(0, 0, 10, 10), (0, 0, 10, 10)])
    assert (r["frames"], r["detected"], r["hits"], r["recall"], r["mean_iou"]) == (2, 1, 1, 0.5, 1.0)
    assert np.isnan(detection_recall([None], [None])["recall"])
