"""Record-and-replay augmentation (DataCompDR): exact replay, crop-box semantics, the stored layout, and
agreement with torchvision's RandomResizedCrop + RandAugment, whose draws and ops it must reproduce."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms.autoaugment import _apply_op

from ablate.core.data.augment import (
    OP_NAMES,
    AugmentConfig,
    RecordedAugment,
    compress,
    decompress,
)
from ablate.core.data.augment_ops import SIGNED_OPS, apply_op, op_magnitudes

BICUBIC = T.InterpolationMode.BICUBIC


def noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def smooth_image(height: int, width: int) -> Image.Image:
    """Low-frequency content, so views of it at two resolutions can be compared pixel by pixel."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(5 * x + 2 * y), np.cos(3 * y - 4 * x), np.sin(6 * x * y + 1)]
    return Image.fromarray(np.stack([(127.5 + 120 * c).astype(np.uint8) for c in channels], axis=-1))


def tv_table(height: int, width: int, magnitude: int = 9, bins: int = 31) -> list[tuple[float, bool]]:
    """torchvision's own magnitude table (private API, used only to check ours against it)."""
    space = T.RandAugment()._augmentation_space(bins, (height, width))
    assert tuple(space) == OP_NAMES
    return [(float(m[magnitude]) if m.ndim else 0.0, signed) for m, signed in space.values()]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_replay_at_recording_size_is_bitwise_exact() -> None:
    rng = np.random.default_rng(1)
    for seed in range(50):
        height, width = (int(v) for v in rng.integers(40, 300, size=2))
        source = noise_image(height, width, seed)
        if seed % 10 == 0:
            source = source.convert("L")  # grey sources are replayed as RGB, like recorded
        size = 224 if seed % 10 == 1 else 64
        aug = RecordedAugment(AugmentConfig(size=size))
        image, params = aug.record_uint8(source, gen(seed))
        tensor, params_again = aug(source, gen(seed))
        assert params_again == params
        stored = decompress(json.loads(json.dumps(compress(params))))
        assert np.array_equal(pixels(aug.replay_uint8(source, stored)), pixels(image))
        replayed = aug.reapply(source, stored)
        assert replayed.shape == (3, size, size) and replayed.dtype == torch.float32
        assert torch.equal(replayed, tensor)


def test_same_draws_and_pixels_as_torchvision_pipeline() -> None:
    """With p = 1 a seeded generator reproduces RandomResizedCrop + RandAugment under torch.manual_seed."""
    source = noise_image(120, 160, seed=3)
    for size in (64, 224):
        aug = RecordedAugment(AugmentConfig(size=size))
        reference = T.Compose([T.RandomResizedCrop(size, interpolation=BICUBIC), T.RandAugment()])
        for seed in range(15):
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                expected = reference(source)
            image, _ = aug.record_uint8(source, gen(seed))
            assert np.array_equal(pixels(image), pixels(expected)), seed


def test_to_tensor_matches_torchvision_to_tensor_normalize() -> None:
    aug = RecordedAugment()
    image = noise_image(50, 70)
    config = aug.config
    expected = T.Normalize(config.mean, config.std)(T.ToTensor()(image))
    assert torch.equal(aug.to_tensor(image), expected)


@given(
    height=st.integers(16, 400),
    aspect=st.floats(3 / 4, 4 / 3),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=200, deadline=None, derandomize=True)
def test_crop_box_within_image_and_bounds(height: int, aspect: float, seed: int) -> None:
    width = max(16, round(height * aspect))
    config = AugmentConfig()
    i, j, h, w = RecordedAugment(config).crop.sample(height, width, gen(seed))
    assert 0 <= i <= i + h <= height and 0 <= j <= j + w <= width and min(h, w) >= 1
    # h, w are rounded from exact h*, w* with h* w* / area in scale and w* / h* in ratio: allow ±0.5 px.
    area = height * width
    assert (h - 0.5) * (w - 0.5) <= config.scale[1] * area + 1e-9
    assert (h + 0.5) * (w + 0.5) >= config.scale[0] * area - 1e-9
    assert (w - 0.5) / (h + 0.5) <= config.ratio[1] + 1e-9
    assert (w + 0.5) / max(h - 0.5, 1e-9) >= config.ratio[0] - 1e-9


@given(height=st.integers(8, 300), width=st.integers(8, 300), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=100, deadline=None, derandomize=True)
def test_crop_box_is_torchvision_get_params(height: int, width: int, seed: int) -> None:
    """Same box as torchvision's get_params for any source shape, extreme aspect ratios (fallback) included."""
    config = AugmentConfig()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(torch.empty(3, height, width), config.scale, config.ratio)
    assert RecordedAugment(config).crop.sample(height, width, gen(seed)) == tuple(expected)


def test_crop_box_maps_the_same_region_at_any_size() -> None:
    """Left half red, right half blue: a replay's red fraction is the box's, at 64 and at 128 px."""
    height, width = 180, 240
    source = np.zeros((height, width, 3), dtype=np.uint8)
    source[:, : width // 2, 0] = 255
    source[:, width // 2 :, 2] = 255
    image = Image.fromarray(source)
    aug = RecordedAugment(AugmentConfig(size=64, randaugment_p=0.0))
    straddling = 0
    for seed in range(40):
        _, params = aug.record_uint8(image, gen(seed))
        _, j, _, w = params["random_resized_crop"]
        expected = min(max(width // 2 - j, 0), w) / w
        straddling += 0 < expected < 1
        for size in (64, 128):
            view = pixels(aug.replay_uint8(image, params, size=size)).astype(int)
            red = np.mean(view[..., 0] > view[..., 2])
            assert red == pytest.approx(expected, abs=1.0 / size), (seed, size)  # within one pixel column
    assert straddling >= 10  # the check saw boxes that cut the colour edge, not only one-colour crops


def test_replay_at_double_size_then_downsampled_matches_replay_at_recording_size() -> None:
    """Every op, translate included, means the same at another resolution (up to resampling)."""
    source = smooth_image(240, 320)
    aug = RecordedAugment(AugmentConfig(size=64))
    diffs, controls = [], []
    for seed in range(30):
        small, params = aug.record_uint8(source, gen(seed))
        large = aug.replay_uint8(source, params, size=128)
        assert large.size == (128, 128)
        down = pixels(large.resize((64, 64), Image.Resampling.BICUBIC)).astype(float)
        diffs.append(np.abs(down - pixels(small)).mean())
        _, other = aug.record_uint8(source, gen(seed + 1000))
        controls.append(np.abs(pixels(aug.replay_uint8(source, other)) - pixels(small).astype(float)).mean())
    assert np.median(diffs) < 3.0 and max(diffs) < 12.0
    assert np.median(controls) > 5 * np.median(diffs)


def test_translate_is_a_fraction_of_the_side() -> None:
    translate_x = OP_NAMES.index("TranslateX")
    fraction = op_magnitudes(9, 31)[translate_x]
    assert fraction == pytest.approx(0.3 * 150 / 331)
    for size in (64, 224):
        assert int(fraction * size) == int(tv_table(size, size)[translate_x][0])
    # A white column shifted right by the same fraction of the side at both sizes.
    for size in (64, 128):
        column = np.zeros((size, size, 3), dtype=np.uint8)
        column[:, size // 4] = 255
        moved = pixels(apply_op(Image.fromarray(column), translate_x, fraction, [0.0, 0.0, 0.0]))
        shift = int(np.flatnonzero(moved[0, :, 0])[0]) - size // 4
        assert shift == int(fraction * size)
        assert shift / size == pytest.approx(fraction, abs=1 / size)


@pytest.mark.parametrize(
    ("op_index", "sign"),
    [(index, sign) for index, name in enumerate(OP_NAMES) for sign in (1.0, -1.0) if sign > 0 or name in SIGNED_OPS],
)
def test_each_op_matches_torchvision_apply_op(op_index: int, sign: float) -> None:
    name = OP_NAMES[op_index]
    image = noise_image(48, 56, seed=op_index)
    ours = sign * op_magnitudes(9, 31)[op_index]
    theirs = sign * tv_table(48, 56)[op_index][0]
    expected = _apply_op(image, name, theirs, T.InterpolationMode.NEAREST, None)
    assert np.array_equal(pixels(apply_op(image, op_index, ours, [0.0, 0.0, 0.0])), pixels(expected))


def test_magnitude_table_is_torchvision_at_9_of_31() -> None:
    ours = op_magnitudes(9, 31)
    for name, value, (tv_value, tv_signed) in zip(OP_NAMES, ours, tv_table(224, 224), strict=True):
        assert (name in SIGNED_OPS) == tv_signed
        if name.startswith("Translate"):
            assert value * 224 == pytest.approx(tv_value, rel=1e-5)
        else:
            assert value == tv_value, name
    with pytest.raises(ValueError):
        op_magnitudes(31, 31)


def test_recorded_ops_are_in_range_with_torchvision_magnitudes() -> None:
    aug = RecordedAugment(AugmentConfig(size=32))
    table = op_magnitudes(9, 31)
    source = noise_image(40, 40)
    seen_ops, seen_negative = set(), set()
    for seed in range(300):
        ops = aug.rand_augment.sample(gen(seed))
        assert ops is not None and len(ops) == 2
        for op_index, magnitude in ops:
            assert isinstance(op_index, int) and 0 <= op_index < len(OP_NAMES)
            assert isinstance(magnitude, float) and abs(magnitude) == table[op_index]
            if magnitude < 0:
                assert OP_NAMES[op_index] in SIGNED_OPS
                seen_negative.add(op_index)
            seen_ops.add(op_index)
    assert seen_ops == set(range(len(OP_NAMES)))
    assert seen_negative == {OP_NAMES.index(name) for name in SIGNED_OPS}
    assert aug.record_uint8(source, gen(0))[0].size == (32, 32)


def test_default_compressed_layout_and_json_round_trip() -> None:
    source = noise_image(200, 150)
    aug = RecordedAugment()
    for seed in range(20):
        _, params = aug(source, gen(seed))
        record = compress(params)
        assert len(record) == 2
        box, ops = record
        assert len(box) == 4 and all(type(v) is int for v in box)
        assert len(ops) == 2
        assert all(len(pair) == 2 and type(pair[0]) is int and type(pair[1]) is float for pair in ops)
        text = json.dumps(record)
        assert json.loads(text) == record
        assert decompress(json.loads(text)) == params
        restored_ops = decompress(json.loads(text))["rand_augment"]
        assert [m for _, m in restored_ops] == [m for _, m in params["rand_augment"]]  # floats exact


def test_skipped_randaugment_records_none_and_replay_skips_it() -> None:
    source = noise_image(100, 120)
    skip = RecordedAugment(AugmentConfig(size=48, randaugment_p=0.0))
    image, params = skip.record_uint8(source, gen(5))
    assert params["rand_augment"] is None
    record = compress(params)
    assert record[1] is None and json.loads(json.dumps(record)) == record
    crop_only = skip.crop.apply(source, params["random_resized_crop"])
    assert np.array_equal(pixels(image), pixels(crop_only))
    assert torch.equal(skip.reapply(source, decompress(record)), skip.to_tensor(crop_only))

    half = RecordedAugment(AugmentConfig(size=48, randaugment_p=0.5))
    skipped = 0
    for seed in range(60):
        tensor, params = half(source, gen(seed))
        skipped += params["rand_augment"] is None
        assert torch.equal(half.reapply(source, decompress(compress(params))), tensor)
    assert 10 < skipped < 50


def test_identity_op_leaves_pixels_unchanged() -> None:
    image = noise_image(30, 40)
    assert np.array_equal(pixels(apply_op(image, 0, 0.0, [0.0, 0.0, 0.0])), pixels(image))
    aug = RecordedAugment(AugmentConfig(size=32))
    params = {"random_resized_crop": (5, 6, 20, 25), "rand_augment": ((0, 0.0), (0, 0.0))}
    crop_only = aug.crop.apply(image, params["random_resized_crop"])
    assert np.array_equal(pixels(aug.replay_uint8(image, params)), pixels(crop_only))


def test_seeded_generator_determines_everything_and_global_rng_is_untouched() -> None:
    source = noise_image(90, 110)
    aug = RecordedAugment(AugmentConfig(size=40))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        first, params = aug(source, gen(11))
        torch.manual_seed(12345)  # the global seed must not matter
        state = torch.random.get_rng_state()
        second, params_again = aug(source, gen(11))
        assert torch.equal(torch.random.get_rng_state(), state)  # nor be consumed
    assert params_again == params and torch.equal(first, second)
    records = {json.dumps(compress(aug(source, gen(seed))[1])) for seed in range(20)}
    assert len(records) == 20


def test_bad_records_are_rejected() -> None:
    for bad in ([[0, 0, 4, 4]], [None, None], [[0, 0, 4], None], [[0, 0, 4, 4], [[14, 0.0]]], "x"):
        with pytest.raises(ValueError):
            decompress(bad)  # type: ignore[arg-type]
    aug = RecordedAugment(AugmentConfig(size=16))
    with pytest.raises(ValueError, match="does not fit"):
        aug.reapply(noise_image(20, 20), {"random_resized_crop": (10, 0, 15, 5), "rand_augment": None})


@pytest.mark.parametrize(
    "field",
    [{"size": 0}, {"scale": (0.5, 0.1)}, {"ratio": (0.0, 1.0)}, {"randaugment_p": 1.5}, {"magnitude": 31}],
)
def test_config_validation(field: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        AugmentConfig(**field)  # type: ignore[arg-type]


def test_a_published_record_translates_in_pixels_of_the_recorded_view() -> None:
    """DataCompDR's `paug.json` (ml-mobileclip `training/dr/transforms.py`: RandomResizedCrop's (i, j, h, w), then
    RandAugment's [op index, magnitude] as torchvision drew it) holds Translate in pixels of the 224-px view it
    was recorded at. A record written by hand in that layout replays as torchvision's own RandomResizedCrop +
    `_apply_op` make it, bit for bit, at the recording size; at another size it shifts by the same fraction."""
    source = smooth_image(256, 256)
    record = [[0, 0, 256, 256], [[3, 30.45], [0, 0]]]
    params = decompress(json.loads(json.dumps(record)), translate_side=224)
    aug = RecordedAugment(AugmentConfig(size=224))
    for size, shift in ((224, 30.45), (64, 30.45 * 64 / 224)):
        crop = T.RandomResizedCrop(size, interpolation=BICUBIC)
        view = T.functional.resized_crop(source, 0, 0, 256, 256, [size, size], BICUBIC, antialias=crop.antialias)
        expected = _apply_op(view, "TranslateX", shift, T.InterpolationMode.NEAREST, None)
        replayed = pixels(aug.replay_uint8(source, params, size=size))
        assert replayed.any() and np.array_equal(replayed, pixels(expected)), size
        assert not np.array_equal(replayed, pixels(view))  # the translation was applied
    moved = pixels(aug.replay_uint8(source, params))
    assert not moved[:, :30].any() and moved[:, 30:].any()  # int(30.45) black columns on the left, not all black
    assert decompress(record)["translate_side"] is None  # our writer's fractions are the default reading
