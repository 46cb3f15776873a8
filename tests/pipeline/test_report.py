"""`med3d-prep report`: the page builds on the sample stores (3DSeg-8 with a failed case, LIDC with nodules, a run
folder's curves) and on the real hippocampus cases; every figure it links exists; the montage's label overlay is
the stored label on the very planes drawn (checked on the real CT and its liver mask); the page renders in a
headless Chromium with no missing image."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from catalog import load_catalog
from pipeline.cli import main
from pipeline.report import build_report, overlay_rgba, read_planes
from pipeline.report.figures import intensity_table, label_fraction_table
from pipeline.report.html import table
from pipeline.report.montage import draw_case, label_centre, sample_cases

CORRUPT = "Task04_Hippocampus/imagesTr/hippocampus_004.nii.gz"


class _Links(HTMLParser):
    """Collects img src and a href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "a":
            self.links.append(a.get("href") or "")


def _links(index: Path) -> _Links:
    parser = _Links()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


def _assert_every_link_exists(index: Path) -> list[str]:
    from urllib.parse import unquote

    page = _links(index)
    assert page.images, "the page shows no figure"
    anchors = set(re.findall(r'id="([^"]+)"', index.read_text(encoding="utf-8")))
    for ref in page.images + page.links:
        if ref.startswith("#"):
            assert ref[1:] in anchors, ref
            continue
        assert "://" not in ref and not ref.startswith("/"), f"{ref}: not a relative link"
        assert (index.parent / unquote(ref)).is_file(), f"{ref} is linked but missing"
    return page.images


def _cli_build(kind: str, raw: Path, store: Path, ok_codes=(0,)) -> str:
    res = CliRunner().invoke(main, [f"build-{kind}", str(raw), str(store), "--workers", "0", "--no-progress"])
    assert res.exit_code in ok_codes, res.output
    return str(store)


def _fake_run(folder: Path) -> str:
    """A pretraining run folder in the real metrics format (written by the real MetricsLogger)."""
    from model.evaluation.metrics import MetricsLogger

    with MetricsLogger(folder, tensorboard=False) as log:
        for step in range(1, 7):
            log.log("train", step, domain=["heart", "spleen"][step % 2], loss=1.0 / step, lr=1e-3,
                    patches_per_s=2.0 + step, data_wait_s=0.01, step_s=0.5)
        log.log("val", 6, dice={"heart": 0.4, "spleen": float("nan")}, mean_dice=0.4)
    return str(folder)


@pytest.fixture(scope="module")
def msd_report(tmp_path_factory):
    """The 3DSeg-8 sample with one hippocampus image replaced by an HTML page, its report with a run's curves."""
    from pipeline.sample import write_all

    root = tmp_path_factory.mktemp("report_msd")
    write_all(root / "raw", only="msd")
    (root / "raw" / "msd" / CORRUPT).write_bytes(b"<html><body>Service <b>unavailable</b></body></html>")
    store = _cli_build("3dseg8", root / "raw" / "msd", root / "store", ok_codes=(3,))
    run = _fake_run(root / "runs" / "pre")
    out = root / "report"
    res = CliRunner().invoke(main, ["report", store, str(out), "--runs", run, "--montage-cases", "2"])
    assert res.exit_code == 0, res.output
    return store, out, run


@pytest.fixture(scope="module")
def lidc_report(tmp_path_factory):
    from pipeline.sample import write_all

    root = tmp_path_factory.mktemp("report_lidc")
    write_all(root / "raw", only="lidc")
    store = _cli_build("lidc", root / "raw" / "lidc", root / "store")
    return store, build_report(store, root / "report")


@pytest.mark.slow  # the report fixture builds and draws a store (~8 s)
def test_msd_report_links_every_figure_and_names_the_failure(msd_report):
    store, out, _ = msd_report
    images = _assert_every_link_exists(out / "index.html")
    cat = load_catalog(store)
    domains = sorted(set(cat["domain"]))
    assert len(domains) == 8
    text = (out / "index.html").read_text(encoding="utf-8")
    for i, domain in enumerate(domains):
        for kind in ("spacing", "shapes", "intensity", "labels", "montage"):
            assert f"figures/{i:02d}_{domain}_{kind}.png" in images
    assert {"runs/loss.png", "runs/val.png", "runs/throughput.png"} <= set(images)
    failed = cat[cat["status"] == "failed"]
    assert list(failed["case_id"]) == ["hippocampus_004"]
    assert "hippocampus_004" in text and "Failed cases (1)" in text
    # the error (which names the file) is in the page, escaped
    assert CORRUPT in failed["error"].iloc[0]
    assert html.escape(failed["error"].iloc[0], quote=True) in text


@pytest.mark.slow  # the report fixture builds and draws a store (~8 s)
def test_report_pngs_are_real_images(msd_report):
    import matplotlib.image as mpimg

    _, out, _ = msd_report
    for png in (out / "figures").glob("*.png"):
        img = mpimg.imread(png)
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.01, f"{png.name} is blank"


@pytest.mark.slow  # the report fixture builds and draws a store (~8 s)
def test_cli_runs_after_the_flag_and_refuses_stray_arguments(msd_report, tmp_path):
    store, _, run = msd_report
    res = CliRunner().invoke(main, ["report", store, str(tmp_path / "a"), run])
    assert res.exit_code == 2 and "after --runs" in res.output
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nothing"), str(tmp_path / "b")])
    assert res.exit_code == 1 and "no catalog" in res.output


def test_lidc_report_shows_nodule_crops_with_ratings(lidc_report):
    from catalog import load_nodules

    store, result = lidc_report
    images = _assert_every_link_exists(result.index)
    assert "figures/nodules.png" in images
    text = result.index.read_text(encoding="utf-8")
    crops = load_nodules(store)
    crops = crops[crops["case_id"] != ""]
    assert len(crops) >= 1
    for _, nod in crops.iterrows():
        assert nod["case_id"] in text
        assert ", ".join(str(v) for v in nod["malignancy"]) in text
        assert str(nod["label"]) in text
    assert {p.name for p in result.figures} >= {"nodules.png"}
    assert all(p.is_file() for p in result.figures)


def test_real_hippocampus_report(real_dir, tmp_path):
    store = _cli_build("3dseg8", real_dir / "msd", tmp_path / "store")
    result = build_report(store, tmp_path / "report", montage_cases=4)
    images = _assert_every_link_exists(result.index)
    assert "figures/00_hippocampus_montage.png" in images
    cat = load_catalog(store)
    for _, row in cat.iterrows():  # planes through the label: both hippocampus parts are cut
        planes = read_planes(store, row["store_path"], class_voxels=dict(zip(row["label_values"],
                                                                             row["label_voxels"])))
        assert planes.centre_from == "label centroid"
        assert all((p > 0).any() for p in planes.label)
        assert (planes.label[0] > 0).sum() > 20


@pytest.fixture(scope="module")
def ct_store(real_dir, tmp_path_factory):
    """The real abdominal CT with its liver mask, stored at 2 x 1.5 x 1.5 mm (as tests/pipeline/test_real_ct.py)."""
    from pipeline.config import Case, DomainSpec, PrepConfig
    from pipeline.job import build

    ct = real_dir / "ct"
    spec = DomainSpec(name="abdomen", source_dataset="example_ct", modality="CT", channel_names=("CT",),
                      labels={0: "background", 1: "liver"})
    case = Case(domain="abdomen", case_id="ct_sm", scan_id="test:ct_sm", patient_id="ct_sm",
                images=(str(ct / "example_ct_sm.nii.gz"),), label=str(ct / "example_ct_sm_liver.nii.gz"))
    store = str(tmp_path_factory.mktemp("report_ct") / "store")
    res = build([(spec, [case])], store, PrepConfig(chunks=(32, 32, 32)), workers=0, progress=False,
                log=lambda s: None, target_spacing={"abdomen": (2.0, 1.5, 1.5)})
    assert res.failed == []
    return store


def test_montage_overlay_is_the_stored_label_on_the_drawn_planes(ct_store):
    from matplotlib.figure import Figure

    row = load_catalog(ct_store).iloc[0]
    planes = read_planes(ct_store, row["store_path"], class_voxels=dict(zip(row["label_values"],
                                                                            row["label_voxels"])))
    grp = zarr.open_group(ct_store, path=row["store_path"], mode="r")
    image, label = grp["image"][0], grp["label"][...]
    # the planes pass through the liver's centroid (from the whole stored mask), to within 2 voxels
    centroid = np.argwhere(label == 1).mean(axis=0)
    assert planes.centre_from == "label centroid"
    assert np.abs(np.array(planes.centre) - centroid).max() <= 2.0
    z, y, x = planes.centre
    stored_image = (image[z], image[:, y, :], image[:, :, x])
    stored_label = (label[z], label[:, y, :], label[:, :, x])
    for i in range(3):
        np.testing.assert_array_equal(planes.image[i], stored_image[i].astype(np.float32))
        np.testing.assert_array_equal(planes.label[i], stored_label[i])
        drawn = overlay_rgba(planes.label[i])
        np.testing.assert_array_equal(drawn[..., 3] > 0, stored_label[i] > 0)
    assert (label[z] > 0).sum() > 500  # a real slice of liver, not an empty plane
    # The liver is soft tissue: brighter than the body's mean, on the same pixels the overlay marks.
    assert stored_image[0][label[z] > 0].mean() > stored_image[0].mean()
    # Drawn: overlay and image share pixel grid, extent and origin on each of the three axes.
    fig = Figure()
    axes = fig.subplots(1, 3)
    draw_case(axes, planes, "ct_sm")
    for i, ax in enumerate(axes):
        img, over = ax.get_images()
        assert img.get_extent() == over.get_extent() and img.origin == over.origin
        np.testing.assert_array_equal(np.asarray(img.get_array()), planes.image[i])
        np.testing.assert_array_equal(np.asarray(over.get_array())[..., 3] > 0, stored_label[i] > 0)


def test_label_centre_weights_classes_and_lands_on_a_sample():
    fg = np.array([[1, 0, 0, 0], [1, 0, 0, 2], [2, 10, 10, 10]])
    # class 2 has 1 sample but 98 voxels, class 1 two samples for 2 voxels: the centroid lies near class 2
    assert label_centre(fg, (20, 20, 20), {1: 2, 2: 98}) == (10, 10, 10)
    assert label_centre(fg, (20, 20, 20)) in {(0, 0, 0), (0, 0, 2)}
    assert label_centre(np.zeros((0, 4), np.int32), (4, 4, 4)) is None
    # a ring: its centroid (5, 5, 5) is outside it, the planes go through the nearest labelled sample instead
    ring = np.array([[1, 5, 5, 0], [1, 5, 5, 10], [1, 5, 0, 5], [1, 5, 10, 5]])
    assert label_centre(ring, (11, 11, 11), inside=lambda p: True) == (5, 5, 5)
    assert label_centre(ring, (11, 11, 11), inside=lambda p: False) in {tuple(r[1:]) for r in ring}


def test_sample_cases_is_seeded_bounded_and_prefers_labelled():
    import pandas as pd

    rows = pd.DataFrame({"case_id": [f"c{i}" for i in range(10)], "has_label": [i % 3 == 0 for i in range(10)]})
    a, b = sample_cases(rows, 4, 0, "d"), sample_cases(rows, 4, 0, "d")
    assert list(a["case_id"]) == list(b["case_id"]) and len(a) == 4
    assert set(rows[rows["has_label"]]["case_id"]) <= set(a["case_id"])
    assert len(sample_cases(rows, 100, 0, "d")) == 10 and sample_cases(rows, 0, 0, "d").empty


def test_statistics_tables_from_the_catalog():
    import pandas as pd

    rows = pd.DataFrame({
        "case_id": [f"c{i}" for i in range(6)], "source_modality": [""] * 6, "has_label": [True] * 6,
        "p005": [[-1024.0]] * 5 + [[-3024.0]], "mean": [[-500.0]] * 6, "p995": [[400.0 + i] for i in range(6)],
        "label_values": [[0, 1]] * 5 + [[0]], "label_voxels": [[900, 100]] * 5 + [[1000]],
        "shape": [[10, 10, 10]] * 6,
    })
    stats = intensity_table(rows, ["CT"])
    assert list(stats.loc[stats["outlier"] != "", "case_id"]) == ["c5"]  # the padding value, not the 1 HU jitter
    frac = label_fraction_table(rows, ["background", "liver", "tumour"])
    assert set(frac["name"]) == {"liver", "tumour"}
    assert frac[(frac.case_id == "c0") & (frac.value == 1)]["fraction"].item() == pytest.approx(0.1)
    assert (frac[frac.value == 2]["voxels"] == 0).all() and frac[frac.case_id == "c5"]["voxels"].sum() == 0


def test_html_escapes_store_text():
    import pandas as pd

    page = table(pd.DataFrame({"case_id": ['<img src=x onerror="alert(1)">'], "error": ["a & b <c>"]}),
                 wide=["error"])
    assert "<img" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "a &amp; b &lt;c&gt;" in page


CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken", broken.map(function (i) { return i.getAttribute("src"); }).join(" "));
});
</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary; module-scoped and requested first, so a machine without one skips before the stores
    are built."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    pytest.skip("no chromium binary on PATH (Debian: apt-get install -y chromium; .ci/run installs it)")


def _chromium_run(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=180)


def _loaded_images(binary: str, profile: Path, page: Path) -> tuple[int, list[str]]:
    """Open ``page`` (a copy of the report with the checking script) and read what the script recorded."""
    res = _chromium_run(binary, profile, "--virtual-time-budget=15000", "--dump-dom", page.as_uri())
    body = re.search(r'<body data-images="(\d+)" data-broken="([^"]*)"', res.stdout)
    assert body, f"the check script did not run: {res.stdout[-500:]} {res.stderr[-1500:]}"
    return int(body.group(1)), body.group(2).split()


@pytest.mark.slow  # the report fixture builds and draws a store (~8 s)
@pytest.mark.chromium
def test_page_renders_in_headless_chromium(chromium, msd_report, tmp_path):
    from PIL import Image

    binary = chromium
    _, out, _ = msd_report
    index = out / "index.html"
    shot = tmp_path / "page.png"
    res = _chromium_run(binary, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000",
                        index.as_uri())
    assert shot.is_file(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1280)
    assert (pixels < 200).mean() > 0.02 and pixels.std() > 10, "the screenshot is blank"
    # every image of the page decodes (naturalWidth > 0), checked from inside the page
    html_text = index.read_text(encoding="utf-8")
    n_img = len(_links(index).images)
    check = out / "_check.html"  # next to index.html, so the relative links resolve the same way
    check.write_text(html_text.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    control = out / "_check_control.html"
    control.write_text(html_text.replace("</body>", '<img src="figures/missing.png">' + CHECK_SCRIPT + "</body>"),
                       encoding="utf-8")
    try:
        assert _loaded_images(binary, tmp_path / "profile", check) == (n_img, [])
        # the check sees a missing image when there is one
        assert _loaded_images(binary, tmp_path / "profile", control) == (n_img + 1, ["figures/missing.png"])
    finally:
        check.unlink()
        control.unlink()
    shutil.copy(shot, out.parent / "page.png")  # kept with the module's tmp folder for a look
