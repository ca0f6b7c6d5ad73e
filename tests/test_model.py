import pytest
import torch
import torchvision

from cpcl_kit.errors import KitError
from cpcl_kit.model import BACKBONES, DeepLabV3Plus


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("os_", [16, 8])
def test_output_shape_every_backbone_and_stride(backbone, os_):
    torch.manual_seed(0)
    net = DeepLabV3Plus(5, backbone=backbone, output_stride=os_, head_channels=16).eval()
    x = torch.randn(1, 3, 37, 45)  # odd sizes on purpose
    with torch.no_grad():
        f = net.features(x)
    assert f["logits"].shape == (1, 5, 37, 45)
    # layer4 sits at the requested output stride: ceil(37/os) for the ResNet stem arithmetic
    h4 = f["layer4"].shape[-1]
    assert h4 == f["layer3"].shape[-1] == (f["layer2"].shape[-1] if os_ == 8 else h4)
    assert f["layer1"].shape[-1] == 12  # stride 4
    assert h4 == {16: 3, 8: 6}[os_]


def _conv(k, cin, cout, bias=False):
    return k * k * cin * cout + (cout if bias else 0)


def _bn(c):
    return 2 * c


def _resnet50_params():
    """ResNet-50 without fc, from its layer shapes."""
    n = _conv(7, 3, 64) + _bn(64)
    cin = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            n += _conv(1, cin, width) + _bn(width) + _conv(3, width, width) + _bn(width)
            n += _conv(1, width, 4 * width) + _bn(4 * width)
            if b == 0:
                n += _conv(1, cin, 4 * width) + _bn(4 * width)
            cin = 4 * width
    return n


def test_resnet50_parameter_count_matches_hand_count():
    C, ch, hi, lo = 21, 256, 2048, 256
    aspp = _conv(1, hi, ch) + 3 * _conv(3, hi, ch) + _bn(4 * ch) + _conv(1, 4 * ch, ch)
    aspp += _conv(1, hi, ch) + _bn(ch) + _conv(1, ch, ch) + _bn(ch)  # pooling branch + out BN
    decoder = _conv(1, lo, 48) + _bn(48) + _conv(3, ch + 48, ch) + _bn(ch) + _conv(3, ch, ch) + _bn(ch)
    classifier = _conv(1, ch, C, bias=True)
    expected = _resnet50_params() + aspp + decoder + classifier
    net = DeepLabV3Plus(C, backbone="resnet50", output_stride=16)
    got = sum(p.numel() for p in net.parameters())
    assert got == expected
    assert abs(got / 1e6 - 40.35) < 0.01


def test_strict_loading_names_missing_key(tmp_path):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer2.0.conv1.weight"]
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    with pytest.raises(KitError, match="layer2.0.conv1.weight"):
        DeepLabV3Plus(3, backbone="resnet18", backbone_weights=path)


def test_loading_rejects_non_state_dict(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(KitError, match="junk.pth"):
        DeepLabV3Plus(3, backbone="resnet18", backbone_weights=path)


def test_backbone_weights_load_with_fc_extra(tmp_path):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet34(weights=None)
    path = tmp_path / "r34.pth"
    torch.save(ref.state_dict(), path)  # includes fc.* which is allowed
    net = DeepLabV3Plus(3, backbone="resnet34", backbone_weights=path, head_channels=8)
    assert torch.equal(net.backbone.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)


def test_save_load_round_trip_identical_outputs(tmp_path):
    torch.manual_seed(0)
    a = DeepLabV3Plus(4, backbone="resnet18", head_channels=16).eval()
    torch.save(a.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(1)
    b = DeepLabV3Plus(4, backbone="resnet18", head_channels=16).eval()
    b.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_imagenet_reads_torchvision_cache_and_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def download(*a, **k):
        raise AssertionError("the kit must not download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    with pytest.raises(KitError, match=r"backbone_weights='imagenet'.*resnet18-f37072fd\.pth.*downloads nothing"):
        DeepLabV3Plus(3, backbone="resnet18", backbone_weights="imagenet")
    # the same file name in the cache is read (here: a random torchvision resnet18 state dict)
    torch.manual_seed(0)
    ref = torchvision.models.resnet18()
    (tmp_path / "checkpoints").mkdir()
    torch.save(ref.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    net = DeepLabV3Plus(3, backbone="resnet18", output_stride=16, backbone_weights="imagenet")
    assert torch.equal(net.backbone.conv1.weight, ref.conv1.weight)
    assert torch.equal(net.backbone.layer3[1].bn2.running_var, ref.layer3[1].bn2.running_var)


def test_bad_arguments():
    with pytest.raises(KitError, match="resnet18"):
        DeepLabV3Plus(3, backbone="vgg16")
    with pytest.raises(KitError, match="output_stride"):
        DeepLabV3Plus(3, backbone="resnet18", output_stride=32)
