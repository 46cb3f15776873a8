"""nnU-Net's augmentation set (rotation, scaling, mirroring, brightness, contrast, gamma) as drawn and applied by
model/data/augment_affine.py: the draws follow the stated probabilities and ranges, and each transform does what
it says on real numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.data.augment import rigid_params
from model.data.augment_affine import AugmentSpec, apply_augment, apply_intensity, augment_params

SPEC = AugmentSpec()


def _draws(n_steps=400, batch=5):
    return [augment_params(SPEC, seed=3, step=s, batch=batch, shape=(32, 32, 32)) for s in range(n_steps)]


def test_draws_follow_the_probabilities_and_ranges():
    ps = _draws()
    cat = {k: torch.cat([getattr(p, k) for p in ps]) for k in ("angles_deg", "scale", "mirror", "brightness",
                                                             "contrast", "gamma")}
    n = len(cat["scale"])  # 2,000 samples: a binomial share is within ~4 standard errors of p

    def share(mask, p):
        assert abs(mask.double().mean().item() - p) < 4 * np.sqrt(p * (1 - p) / mask.numel()), (mask.mean(), p)

    share(cat["angles_deg"].abs().sum(1) > 0, 0.2)
    assert cat["angles_deg"].abs().max() <= 30
    share(cat["scale"] != 1, 0.2)
    assert cat["scale"].min() >= 0.7 and cat["scale"].max() <= 1.4
    share(cat["mirror"], 0.5)
    for name, p, (lo, hi) in (("brightness", 0.15, (0.75, 1.25)), ("contrast", 0.15, (0.75, 1.25)),
                              ("gamma", 0.3, (0.7, 1.5))):
        share(cat[name] != 1, p)
        applied = cat[name][cat[name] != 1]
        assert applied.min() >= lo and applied.max() <= hi
        assert abs(applied.mean().item() - (lo + hi) / 2) < 0.05 * (hi - lo) * 4  # uniform in the range
    assert n == 2000


def test_a_pure_function_of_seed_and_step_apart_from_the_rigid_stream():
    a = augment_params(SPEC, 1, 7, 4, shape=(16, 24, 32))
    b = augment_params(SPEC, 1, 7, 4, shape=(16, 24, 32))
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("theta", "scale", "mirror", "gamma"))
    c = augment_params(SPEC, 1, 8, 4, shape=(16, 24, 32))
    assert not torch.equal(a.theta, c.theta) or not torch.equal(a.gamma, c.gamma)
    # the rigid augmentation of existing runs draws what it drew before this module existed
    before = rigid_params(0, 12, 2, max_rotation_deg=15.0, max_translation=0.1)
    assert before.shape == (2, 3, 4) and torch.allclose(
        before, rigid_params(0, 12, 2, max_rotation_deg=15.0, max_translation=0.1))


def _only(**kw):
    zero = {f"p_{k}": 0.0 for k in ("rotation", "scale", "mirror", "brightness", "contrast", "gamma")}
    return AugmentSpec(**{**zero, **kw})


def test_mirroring_is_an_exact_flip_of_image_and_label():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, 1, 8, 10, 12, generator=g)
    label = torch.randint(0, 3, (3, 8, 10, 12), generator=g)
    p = augment_params(_only(p_mirror=1.0), 0, 0, 3, shape=(8, 10, 12))
    assert p.mirror.all()
    img, lab = apply_augment(image, label, p)
    assert torch.allclose(img, image.flip(2, 3, 4), atol=1e-5) and torch.equal(lab, label.flip(1, 2, 3))


def test_scaling_enlarges_the_content_by_the_drawn_factor():
    label = torch.zeros(1, 33, 33, 33, dtype=torch.int64)
    label[:, 12:21, 12:21, 12:21] = 1  # a 9-voxel cube in the centre
    p = augment_params(_only(p_scale=1.0, scale=(1.4, 1.4)), 0, 0, 1, shape=(33, 33, 33))
    _, lab = apply_augment(torch.zeros(1, 1, 33, 33, 33), label, p)
    side = lab[0, 16, 16].sum().item()  # a line through the centre
    assert p.scale.item() == pytest.approx(1.4) and side == pytest.approx(9 * 1.4, abs=1.01)


def test_identity_is_skipped_and_intensity_rules_hold():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 1, 6, 6, 6, generator=g) * 2 + 1
    label = torch.ones(2, 6, 6, 6, dtype=torch.int64)
    none = augment_params(_only(), 0, 0, 2, shape=(6, 6, 6))
    img, lab = apply_augment(image, label, none)
    assert torch.equal(img, image) and torch.equal(lab, label)
    bright = augment_params(_only(p_brightness=1.0, brightness=(1.2, 1.2)), 0, 0, 2, shape=(6, 6, 6))
    assert torch.allclose(apply_intensity(image, bright), image * 1.2)
    contrast = augment_params(_only(p_contrast=1.0, contrast=(1.25, 1.25)), 0, 0, 2, shape=(6, 6, 6))
    out = apply_intensity(image, contrast)
    assert torch.allclose(out.amin((1, 2, 3, 4)), image.amin((1, 2, 3, 4)), atol=1e-5)  # range kept
    assert (out.std((1, 2, 3, 4)) > image.std((1, 2, 3, 4))).all()
    gamma = augment_params(_only(p_gamma=1.0, gamma=(1.5, 1.5)), 0, 0, 2, shape=(6, 6, 6))
    out = apply_intensity(image, gamma)
    assert torch.allclose(out.mean((1, 2, 3, 4)), image.mean((1, 2, 3, 4)), atol=1e-4)
    assert torch.allclose(out.std((1, 2, 3, 4)), image.std((1, 2, 3, 4)), atol=1e-4)
    assert not torch.allclose(out, image, atol=1e-2)


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="p_mirror"):
        AugmentSpec(p_mirror=1.5)
    with pytest.raises(ValueError, match="scale"):
        AugmentSpec(scale=(1.4, 0.7))


def _reference(image, label, p):
    """The plain form: every sample resampled with its matrix, every sample's intensity computed."""
    from model.data.augment import apply_rigid
    from model.data.augment_affine import _intensity_one

    img, lab = apply_rigid(image, label, p.theta)
    out = torch.stack([_intensity_one(img[i], float(p.brightness[i]), float(p.contrast[i]), float(p.gamma[i]))
                       for i in range(len(img))])
    return out, lab


def test_the_shortcuts_give_what_resampling_every_sample_gives():
    """Flipping the mirror-only samples and skipping the untouched ones changes no value (float rounding)."""
    g = torch.Generator().manual_seed(2)
    image = torch.randn(6, 1, 12, 14, 16, generator=g)
    label = torch.randint(0, 4, (6, 12, 14, 16), generator=g)
    spec = AugmentSpec(p_rotation=0.3, p_scale=0.3, p_brightness=0.5, p_contrast=0.5, p_gamma=0.5)
    kinds = set()
    for step in range(25):
        p = augment_params(spec, 5, step, 6, shape=(12, 14, 16))
        got_img, got_lab = apply_augment(image, label, p)
        want_img, want_lab = _reference(image, label, p)
        assert torch.equal(got_lab, want_lab)
        assert (got_img - want_img).abs().max() < 1e-4
        kinds |= {("warp" if a.abs().sum() or s != 1 else "mirror" if m.any() else "none")
                  for a, s, m in zip(p.angles_deg, p.scale, p.mirror)}
    assert kinds == {"warp", "mirror", "none"}  # every path was taken


def test_in_place_gives_the_same_values_in_the_tensors_it_was_given():
    """The loader augments in place in its workers (the batch's shared-memory tensors go to the main process
    uncopied): every path gives what the copying form gives, written into the tensors passed in."""
    g = torch.Generator().manual_seed(3)
    image = torch.randn(6, 1, 12, 14, 16, generator=g)
    label = torch.randint(0, 4, (6, 12, 14, 16), generator=g)
    spec = AugmentSpec(p_rotation=0.3, p_scale=0.3, p_brightness=0.5, p_contrast=0.5, p_gamma=0.5)
    changed = 0
    for step in range(12):
        p = augment_params(spec, 7, step, 6, shape=(12, 14, 16))
        want_img, want_lab = apply_augment(image, label, p)
        img, lab = image.clone(), label.clone()
        ptr_img, ptr_lab = img.data_ptr(), lab.data_ptr()
        got_img, got_lab = apply_augment(img, lab, p, inplace=True)
        assert got_img is img and got_lab is lab and img.data_ptr() == ptr_img and lab.data_ptr() == ptr_lab
        assert torch.equal(got_img, want_img) and torch.equal(got_lab, want_lab)
        changed += int(not torch.equal(img, image))
    assert changed >= 10  # the tensors given were written
    none = augment_params(_only(), 0, 0, 6, shape=(12, 14, 16))
    copy = image.clone()
    assert apply_augment(copy, label.clone(), none, inplace=True)[0] is copy and torch.equal(copy, image)


def test_the_loaders_patches_and_rigid_draws_equal_those_before_issue_22(tmp_path):
    """Done-when of #22: with a fixed seed the loader's patches are identical to before the round (the augmentation
    the loader applies by default did not change). The digests were recorded by the code before #22's first change
    (commit ac24df1^, in a separate worktree) reading the same store of the four real MSD hippocampus cases
    (tests/data/real/msd), and this code gives them too: six batches of two 16³ patches (images, labels, cases)
    and six steps of finetune's rigid augmentation parameters."""
    import hashlib
    import json

    from model.data.augment import rigid_params
    from model.data.patches import PatchConfig, PretrainStream, StoreIndex
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    found, _ = scan_msd(Path(__file__).resolve().parents[1] / "data" / "real" / "msd")
    store = str(tmp_path / "store")
    assert build(found, store, PrepConfig(), workers=0, progress=False, log=lambda s: None).converted == 4
    stream = PretrainStream(store, StoreIndex.from_store(store, split="train"),
                            PatchConfig(patch=(16, 16, 16), batch=2, seed=3, fg_fraction=1 / 3), num_steps=6)
    patches = hashlib.sha256()
    for batch in stream:
        patches.update(np.ascontiguousarray(batch["image"].numpy()).tobytes())
        patches.update(np.ascontiguousarray(batch["label"].numpy()).tobytes())
        patches.update(json.dumps([str(c) for c in batch["cases"]]).encode())
    rigid = hashlib.sha256()
    for step in range(6):
        rigid.update(rigid_params(0, step, 2, max_rotation_deg=15.0, max_translation=0.1).numpy().tobytes())
    assert (patches.hexdigest()[:16], rigid.hexdigest()[:16]) == ("2b0d6d5d61d88971", "22c52ba722b6a043")
