import pytest
import torch
import torchvision

from cpcl_kit.errors import KitError
from cpcl_kit.nets.deeplab import BACKBONES, DeepLabV3Plus


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


def _bottleneck_layers(cin: int, layers) -> int:
    """Parameters of the four Bottleneck layers of a ResNet whose stem gives ``cin`` channels."""
    n = 0
    for width, blocks in zip((64, 128, 256, 512), layers):
        for b in range(blocks):
            n += _conv(1, cin, width) + _bn(width) + _conv(3, width, width) + _bn(width)
            n += _conv(1, width, 4 * width) + _bn(4 * width)
            if b == 0:
                n += _conv(1, cin, 4 * width) + _bn(4 * width)
            cin = 4 * width
    return n


def _resnet50_params():
    """ResNet-50 without fc, from its layer shapes."""
    return _conv(7, 3, 64) + _bn(64) + _bottleneck_layers(64, (3, 4, 6, 3))


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


@pytest.mark.parametrize("backbone, width", [("resnet18_w16", 16), ("resnet18_w32", 32)])
def test_narrow_resnet18_is_resnet18_at_a_fraction_of_the_width(backbone, width):
    """Same keys as torchvision's ResNet-18, every tensor's channels scaled by width / 64; the head
    reads layer4's 8 x width channels; a conv costs (width / 64)^2 of ResNet-18's."""
    from cpcl_kit.nets.deeplab import resnet

    narrow, r18 = resnet(backbone).state_dict(), torchvision.models.resnet18().state_dict()
    assert list(narrow) == list(r18)
    scale = width / 64
    for k, t in narrow.items():
        ref = r18[k].shape
        if k == "fc.weight":
            assert t.shape == (1000, 8 * width)
        elif k.endswith("num_batches_tracked") or k == "fc.bias":
            assert t.shape == ref
        elif k == "conv1.weight":
            assert t.shape == (width, 3, 7, 7)
        else:  # conv [out, in, k, k] and BN [c]: every channel count scaled
            assert t.shape == tuple(int(d * scale) if i < 2 else d for i, d in enumerate(ref)), k
    net = DeepLabV3Plus(11, backbone=backbone, head_channels=8)
    assert net.aspp.branches[0].in_channels == 8 * width and net.low_proj[0].in_channels == width
    ratio = sum(p.numel() for p in net.backbone.parameters()) / sum(
        p.numel() for n, p in r18.items() if not n.startswith("fc.") and p.is_floating_point() and "running" not in n)
    assert ratio == pytest.approx(scale**2, rel=0.02)
    with pytest.raises(KitError, match=f"no ImageNet weights exist for {backbone}"):
        DeepLabV3Plus(3, backbone=backbone, backbone_weights="imagenet")


def test_bad_arguments():
    with pytest.raises(KitError, match="resnet18"):
        DeepLabV3Plus(3, backbone="vgg16")
    with pytest.raises(KitError, match="output_stride"):
        DeepLabV3Plus(3, backbone="resnet18", output_stride=32)


# ------------------------------------------------------------------------------ dilation rules

# Blocks per layer (layer1..layer4) and 3x3 convs per block, from the ResNet papers' tables.
BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3),
          "resnet101": (3, 4, 23, 3), "resnet50_v1c": (3, 4, 6, 3), "resnet101_v1c": (3, 4, 23, 3),
          "resnet18_w16": (2, 2, 2, 2), "resnet18_w32": (2, 2, 2, 2)}
BASIC = ("resnet18", "resnet34", "resnet18_w16", "resnet18_w32")


def _official_rate(layer: int, block: int, os_: int) -> int:
    """The official rule, written out: exp_voc/network.py gives layer4's blocks 2, 4, 8 at OS16
    (counter from 2, doubling per block); at OS8 (the kit's extension; the official has none)
    layer3's blocks all get 2 and layer4's counter starts at 4."""
    if os_ == 16:
        return 2 * 2 ** block if layer == 4 else 1
    return {2: 1, 3: 2, 4: 4 * 2 ** block}[layer]


def _torchvision_rate(layer: int, block: int, conv: int, os_: int) -> int:
    """torchvision's replace_stride_with_dilation: a dilated layer's first 3x3 conv keeps the
    previous rate, every later 3x3 conv of the layer uses the new one."""
    new = {16: {2: 1, 3: 1, 4: 2}, 8: {2: 1, 3: 2, 4: 4}}[os_][layer]
    previous = {16: {4: 1}, 8: {3: 1, 4: 2}}[os_].get(layer, new)
    return previous if block == 0 and conv == 0 else new


def _expected_convs(backbone: str, os_: int, mode: str) -> dict[str, tuple[int, int, int]]:
    """{conv name: (stride, dilation, padding)} of every conv in layer2..layer4."""
    out = {}
    strided = {2: True, 3: os_ == 16, 4: False}  # layers that keep their stride 2
    for layer in (2, 3, 4):
        for block in range(BLOCKS[backbone][layer - 1]):
            names = ("conv1", "conv2") if backbone in BASIC else ("conv2",)
            for conv, name in enumerate(names):
                d = (_official_rate(layer, block, os_) if mode == "official"
                     else _torchvision_rate(layer, block, conv, os_))
                s = 2 if strided[layer] and block == 0 and conv == 0 else 1
                out[f"layer{layer}.{block}.{name}"] = (s, d, d)
            if backbone not in BASIC:  # the 1x1 convs of a bottleneck
                out[f"layer{layer}.{block}.conv1"] = (1, 1, 0)
                out[f"layer{layer}.{block}.conv3"] = (1, 1, 0)
            if block == 0:
                out[f"layer{layer}.0.downsample.0"] = (2 if strided[layer] else 1, 1, 0)
    return out


def _actual_convs(net) -> dict[str, tuple[int, int, int]]:
    return {name: (m.stride[0], m.dilation[0], m.padding[0])
            for name, m in net.backbone.named_modules()
            if isinstance(m, torch.nn.Conv2d) and name.split(".")[0] in ("layer2", "layer3", "layer4")}


@pytest.mark.parametrize("mode", ["official", "torchvision"])
@pytest.mark.parametrize("os_", [16, 8])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_conv_stride_dilation_padding(backbone, os_, mode):
    assert set(BLOCKS) == set(BACKBONES)
    net = DeepLabV3Plus(3, backbone=backbone, output_stride=os_, head_channels=8, dilation=mode)
    assert _actual_convs(net) == _expected_convs(backbone, os_, mode)


def test_official_rule_spelled_out_for_the_paper_backbones():
    """The same rule as literal rates per 3x3 conv, for the cases the paper presets use."""
    for backbone in ("resnet50", "resnet50_v1c", "resnet101_v1c"):
        net = DeepLabV3Plus(3, backbone=backbone, output_stride=16, head_channels=8, dilation="official")
        assert [b.conv2.dilation[0] for b in net.backbone.layer4] == [2, 4, 8]
        assert [b.conv2.stride[0] for b in net.backbone.layer4] == [1, 1, 1]
        assert {b.conv2.dilation[0] for b in net.backbone.layer3} == {1}
    net = DeepLabV3Plus(3, backbone="resnet18", output_stride=16, head_channels=8, dilation="official")
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in net.backbone.layer4] == [(2, 2), (4, 4)]
    net = DeepLabV3Plus(3, backbone="resnet50", output_stride=8, head_channels=8, dilation="official")
    assert [b.conv2.dilation[0] for b in net.backbone.layer3] == [2] * 6
    assert [b.conv2.dilation[0] for b in net.backbone.layer4] == [4, 8, 16]


# The convs of the CPU presets' ResNet-18 layout (resnet18_w16 has ResNet-18's, written down before the
# `dilation` option existed): (name, stride, dilation, padding) of every 3x3 conv and shortcut in
# layer3 and layer4.
TODAY_R18 = {
    16: [("layer3.0.conv1", 2, 1, 1), ("layer3.0.conv2", 1, 1, 1), ("layer3.0.downsample.0", 2, 1, 0),
         ("layer3.1.conv1", 1, 1, 1), ("layer3.1.conv2", 1, 1, 1), ("layer4.0.conv1", 1, 1, 1),
         ("layer4.0.conv2", 1, 2, 2), ("layer4.0.downsample.0", 1, 1, 0), ("layer4.1.conv1", 1, 2, 2),
         ("layer4.1.conv2", 1, 2, 2)],
    8: [("layer3.0.conv1", 1, 1, 1), ("layer3.0.conv2", 1, 2, 2), ("layer3.0.downsample.0", 1, 1, 0),
        ("layer3.1.conv1", 1, 2, 2), ("layer3.1.conv2", 1, 2, 2), ("layer4.0.conv1", 1, 2, 2),
        ("layer4.0.conv2", 1, 4, 4), ("layer4.0.downsample.0", 1, 1, 0), ("layer4.1.conv1", 1, 4, 4),
        ("layer4.1.conv2", 1, 4, 4)],
}
# Sums of |weights| (float64) of both nets and of their eval-mode logits on a fixed input, measured
# when the CPU presets moved to resnet18_w16 (torch 2.14.1, the pinned version): a change to the
# model code must not silently change the nets the CPU presets build (and their saved runs load).
# (output stride, head channels) -> (sum of |weights| per net, sum of logits per net on a fixed input)
TODAY_SUMS = {(16, 32): ([37505.00086462685, 37507.23706032834], [7312.205248760198, 19345.834981715714]),
              (16, 64): ([46121.92059529302, 46117.56891883554], [44248.131821066134, 29191.11631023252])}


@pytest.mark.parametrize("preset", ["smoke", "demo", "benchmark"])
def test_cpu_presets_build_todays_nets(preset):
    from cpcl_kit.config import make_config
    from cpcl_kit.nets.deeplab import build_nets

    cfg = make_config(preset, backbone_weights="none")  # the layout, not the weights
    assert cfg.dilation == "torchvision" and cfg.backbone == "resnet18_w16"
    nets = build_nets(cfg)
    for net in nets:
        convs = _actual_convs(net)
        assert [(k, *convs[k]) for k, *_ in TODAY_R18[cfg.output_stride]] == TODAY_R18[cfg.output_stride]
    weights, logits = TODAY_SUMS[cfg.output_stride, cfg.head_channels]
    got = [sum(float(t.double().abs().sum()) for t in n.state_dict().values() if t.is_floating_point())
           for n in nets]
    assert got == pytest.approx(weights, rel=1e-12)
    torch.manual_seed(5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # a sum of logits: the thread count changes its last digits (2.8e-4 relative seen), so 1e-3
        assert [float(n.eval()(x).double().sum()) for n in nets] == pytest.approx(logits, rel=1e-3)


def test_unknown_dilation_is_one_clear_error():
    with pytest.raises(KitError, match=r"dilation: unknown 'multigrid', expected one of official, torchvision"):
        DeepLabV3Plus(3, backbone="resnet18", dilation="multigrid")


# ------------------------------------------------------------------------- v1c (deep stem) backbones


def _furnace_v1c_shapes(layers: tuple[int, int, int, int]) -> dict[str, tuple]:
    """Key -> shape of CPS/TorchSemiSeg's resnet*_v1c.pth, from furnace/base_model/resnet.py
    (ResNet(Bottleneck, layers, deep_stem=True, stem_width=64)) and Gluon's conversion: BN tensors
    weight, bias, running_mean, running_var (no num_batches_tracked), plus the ImageNet fc."""
    shapes = {}

    def bn(prefix, c):
        for t in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{t}"] = (c,)

    shapes["conv1.0.weight"] = (64, 3, 3, 3)
    bn("conv1.1", 64)
    shapes["conv1.3.weight"] = (64, 64, 3, 3)
    bn("conv1.4", 64)
    shapes["conv1.6.weight"] = (128, 64, 3, 3)
    bn("bn1", 128)
    inplanes = 128
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(blocks):
            p = f"layer{i}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            bn(f"{p}.bn3", 4 * planes)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                bn(f"{p}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 2048), (1000,)
    return shapes


def _furnace_file(path, layers=(3, 4, 6, 3), wrap=False, edit=None):
    torch.manual_seed(3)
    state = {k: torch.randn(s) for k, s in _furnace_v1c_shapes(layers).items()}
    if edit:
        edit(state)
    torch.save({"model": state} if wrap else state, path)
    return state


@pytest.mark.parametrize("backbone", ["resnet50_v1c", "resnet101_v1c"])
def test_v1c_has_the_furnace_key_layout(backbone):
    net = DeepLabV3Plus(3, backbone=backbone, head_channels=8)
    own = {k: tuple(v.shape) for k, v in net.backbone.state_dict().items() if "num_batches_tracked" not in k}
    furnace = {k: s for k, s in _furnace_v1c_shapes(BLOCKS[backbone]).items() if not k.startswith("fc.")}
    assert own == furnace


@pytest.mark.parametrize("wrap", [False, True])
def test_v1c_weights_load_by_their_own_keys(tmp_path, wrap):
    path = tmp_path / "resnet50_v1c.pth"
    state = _furnace_file(path, wrap=wrap)
    net = DeepLabV3Plus(3, backbone="resnet50_v1c", backbone_weights=path, head_channels=8)
    sd = net.backbone.state_dict()
    for k in ("conv1.0.weight", "conv1.4.running_var", "conv1.6.weight", "bn1.bias",
              "layer1.0.conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight"):
        assert torch.equal(sd[k], state[k]), k
    # the stem is what furnace runs: conv-BN-ReLU x2, conv, then bn1, ReLU, max-pool
    b = net.backbone
    assert [type(m).__name__ for m in b.conv1] == ["Conv2d", "BatchNorm2d", "ReLU"] * 2 + ["Conv2d"]
    assert b.conv1[0].stride == (2, 2) and b.maxpool.stride == 2


@pytest.mark.parametrize("change, named", [
    (lambda s: s.pop("conv1.4.running_mean"), r"missing keys \['conv1\.4\.running_mean'\]"),
    (lambda s: s.update({"conv1.7.weight": torch.zeros(1)}), r"unexpected keys \['conv1\.7\.weight'\]"),
])
def test_v1c_loading_is_strict(tmp_path, change, named):
    path = tmp_path / "r50v1c.pth"
    _furnace_file(path, edit=change)
    with pytest.raises(KitError, match=r"does not match a CPS/TorchSemiSeg resnet50_v1c: .*" + named):
        DeepLabV3Plus(3, backbone="resnet50_v1c", backbone_weights=path)


def test_the_wrong_family_is_named(tmp_path):
    tv = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tv)
    with pytest.raises(KitError, match=r"missing keys \['conv1\.0\.weight'.*torchvision ResNet; use backbone=resnet50\)"):
        DeepLabV3Plus(3, backbone="resnet50_v1c", backbone_weights=tv)
    v1c = tmp_path / "v1c.pth"
    _furnace_file(v1c)
    with pytest.raises(KitError, match=r"does not match a torchvision resnet50: .*use backbone=resnet50_v1c\)"):
        DeepLabV3Plus(3, backbone="resnet50", backbone_weights=v1c)
    with pytest.raises(KitError, match=r"backbone_weights='imagenet': torchvision has no resnet50_v1c weights"):
        DeepLabV3Plus(3, backbone="resnet50_v1c", backbone_weights="imagenet")


def test_backbone_weights_none_is_random_init():
    torch.manual_seed(0)
    a = DeepLabV3Plus(3, backbone="resnet18", head_channels=8, backbone_weights="none")
    torch.manual_seed(0)
    b = DeepLabV3Plus(3, backbone="resnet18", head_channels=8)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _v1c_backbone_params(layers):
    stem = _conv(3, 3, 64) + _bn(64) + _conv(3, 64, 64) + _bn(64) + _conv(3, 64, 128) + _bn(128)
    return stem + _bottleneck_layers(128, layers)


def test_deeplab_on_v1c_same_head_and_stages():
    from cpcl_kit.nets.summary import parameter_table

    torch.manual_seed(0)
    v1c = DeepLabV3Plus(21, backbone="resnet50_v1c", output_stride=16, dilation="official").eval()
    tv = DeepLabV3Plus(21, backbone="resnet50", output_stride=16, dilation="official").eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        fa, fb = v1c.features(x), tv.features(x)
    assert list(fa) == list(fb)
    assert fa["stem"].shape[1] == 128 and fb["stem"].shape[1] == 64  # the only channel difference
    assert all(fa[k].shape == fb[k].shape for k in fa if k != "stem")
    table = parameter_table(v1c).set_index("part")["parameters"]
    assert int(table["backbone"]) == _v1c_backbone_params((3, 4, 6, 3))
    head = {k: int(v) for k, v in table.items() if k != "backbone"}
    assert head == {k: int(v) for k, v in parameter_table(tv).set_index("part")["parameters"].items()
                    if k != "backbone"}
    assert sum(table) == sum(p.numel() for p in v1c.parameters())


def test_taps_on_map_by_hand():
    """3×3 taps that read the map, averaged over positions: on a 3×3 map at rate 1 each row position
    sees 2, 3, 2 taps (7/3 per axis, 49/9 in all); a rate at least the map's side leaves the centre."""
    from cpcl_kit.nets.summary import taps_on_map

    assert taps_on_map(3, 1) == pytest.approx(49 / 9)
    assert taps_on_map(4, 6) == taps_on_map(4, 4) == 1.0
    assert taps_on_map(32, 6) == pytest.approx(((32 * 3 - 2 * 6) / 32) ** 2)


def test_aspp_reach_names_every_dilated_branch():
    from cpcl_kit.config import make_config
    from cpcl_kit.engine.trainer import nets_for
    from cpcl_kit.nets.summary import aspp_reach

    cfg = make_config("smoke", method="supervised")
    (model,) = nets_for(cfg)
    model.train()
    table = aspp_reach(model, cfg.crop, 512, 16)
    assert model.training and len(table) == 3
    assert table["layer-4 map, paper"].eq("32×32").all()



@pytest.mark.parametrize("side", [3, 4, 6, 7])
def test_aspp_on_a_small_map_equals_its_four_branches(side):
    """Where every rate reaches past the map (the CPU presets' 4×4 at rates 6/12/18), ASPP runs its
    branches as one 1×1 convolution of the centre taps: the same outputs and gradients as the four
    convolutions written out (up to float order), and the outer taps get exactly zero. At side 7 rate
    6 reads the map, so the branches run as they are."""
    from cpcl_kit.nets.deeplab import ASPP

    torch.manual_seed(0)
    aspp = ASPP(16, 8, (6, 12, 18)).train()
    called = []
    for b in aspp.branches:
        b.register_forward_hook(lambda *_: called.append(1))
    x = torch.randn(2, 16, side, side, requires_grad=True)

    def grads(out):
        aspp.zero_grad()
        x.grad = None
        (out * torch.arange(out.numel()).reshape(out.shape).sin()).sum().backward()
        return [b.weight.grad.clone() for b in aspp.branches] + [x.grad.clone()]

    merged = aspp(x)
    assert len(called) == (0 if side <= 6 else 4)
    got = grads(merged)
    ref = aspp.merge(torch.cat([b(x) for b in aspp.branches], dim=1))
    ref = aspp.out(ref + aspp.pool(x.mean(dim=(2, 3), keepdim=True)))
    torch.testing.assert_close(merged, ref, rtol=1e-5, atol=1e-5)
    want = grads(ref)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    if side <= 6:
        outer = torch.ones(3, 3, dtype=torch.bool)
        outer[1, 1] = False
        assert all((g[:, :, outer] == 0).all() for g in got[1:4])
