"""The options every ``med3d-prep build-*`` command shares (workers, dtype, chunks, codecs, ``--like``) and what
they become: the :class:`~pipeline.config.PrepConfig` of the command line, the settings of a weights card, the
exit of a build. Used by :mod:`pipeline.cli` and :mod:`pipeline.cli_sources`."""
from __future__ import annotations

import math
import sys

import click

from .blosc_codecs import CODECS, IMAGE_CODECS

__all__ = ["EXIT_FAILED_CASES", "common_options", "config_from_options", "finish", "like_config", "like_options",
           "parse_window"]

EXIT_FAILED_CASES = 3


def config_from_options(dtype: str, chunks: str | None, codec: str | None, max_voxels: int | None = None,
            image_codec: str = "raw", like: dict | None = None, **extra):
    """The PrepConfig of the command line; ``like`` (the fields ``--like`` sets) wins over the other values."""
    from .config import PrepConfig

    kw = {"dtype": dtype, "image_codec": image_codec, **extra, **(like or {})}
    if max_voxels is not None:
        kw["max_voxels"] = max_voxels
    if chunks:
        try:
            kw["chunks"] = tuple(int(c) for c in chunks.split(","))
        except ValueError:
            raise click.UsageError(f"--chunks {chunks!r}: give one size (64) or three (Z,Y,X, e.g. 64,64,64)") from None
        if len(kw["chunks"]) == 1:
            kw["chunks"] = kw["chunks"] * 3
    if codec:
        kw["codec"] = codec
    try:
        return PrepConfig(**kw)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def finish(result) -> None:
    click.echo(result.summary())
    if result.missing:
        click.echo(f"missing (not built): {', '.join(result.missing)}")
    if result.failed:
        click.echo(f"{len(result.failed)} case(s) failed; see the 'error' column of {result.store}/catalog.parquet",
                   err=True)
        sys.exit(EXIT_FAILED_CASES)


class _VoxelCount(click.ParamType):
    """A positive voxel count, written as an integer or in scientific notation (2e9)."""

    name = "voxels"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            n = float(str(value).replace("_", "").replace(",", ""))
        except ValueError:
            self.fail(f"{value!r} is not a voxel count (e.g. 2e9 or 2000000000)", param, ctx)
        if not (math.isfinite(n) and n >= 1 and n == int(n)):
            self.fail(f"{value!r} must be a positive whole number of voxels", param, ctx)
        return int(n)


_common = [
    click.option("--workers", type=int, default=None, help="Worker processes of the local cluster (default: one "
                 "per core; 0 runs in this process without dask)."),
    click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
                 help="Run on an existing dask cluster instead of a local one."),
    click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True),
    click.option("--chunks", default=None, metavar="Z,Y,X", help="Chunk shape (default 64,64,64)."),
    click.option("--image-codec", type=click.Choice(IMAGE_CODECS),
                 default="raw", show_default=True,
                 help="Image chunks: raw (uncompressed Blosc frames, fastest patch reads) or a Blosc codec "
                      "(lz4hc: ~0.47 of the bytes, ~3x slower random patch reads)."),
    click.option("--codec", type=click.Choice(CODECS), default=None,
                 help="Blosc codec of labels and foreground samples (default lz4hc); images use --image-codec."),
    click.option("--replan", is_flag=True, help="Recompute target spacings instead of using the frozen plan."),
    click.option("--max-voxels", type=_VoxelCount(), default=None, metavar="N",
                 help="Largest input volume (voxels × channels) to read, e.g. 2e9 (the default); a header "
                      "announcing more is refused as damaged before any read."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
]


def common_options(fn):
    from .verify import verify_option  # --verify reaches job.build through the click context, not a parameter

    for opt in reversed([*_common, verify_option]):
        fn = opt(fn)
    return fn


_like_opts = [
    click.option("--like", type=click.Path(exists=True, dir_okay=False), default=None, metavar="CARD.json",
                 help="Preprocess as the encoder of this weights card saw its data (`med3d-train export` writes "
                      "OUT.json beside OUT.pth): the card's target spacing and intensity rule for the modality."),
    click.option("--like-domain", default=None, metavar="NAME",
                 help="With --like: the card domain to match (needed when the card has several domains of the "
                      "modality preprocessed differently)."),
]


def like_options(fn):
    for opt in reversed(_like_opts):
        fn = opt(fn)
    return fn


def like_config(like: str | None, like_domain: str | None, specs) -> tuple[dict, dict | None]:
    """(PrepConfig fields, target spacing per domain) that ``--like CARD`` sets for building ``specs``
    (DomainSpecs); ``({}, None)`` without it. An option given on the command line that contradicts the card
    (--dtype, --window) is a usage error, as is a card without a domain of the build's modality."""
    from click.core import ParameterSource

    from catalog.card import CardError, read_card
    from .like import like_settings

    if like is None:
        if like_domain is not None:
            raise click.UsageError("--like-domain needs --like CARD.json")
        return {}, None
    try:
        card = read_card(like)
        settings = like_settings(card, {s.name: s.modality for s in specs}, like_domain=like_domain, where=like)
    except CardError as exc:
        raise click.UsageError(str(exc)) from None
    ctx = click.get_current_context()
    for option, key, parse in (("dtype", "dtype", str), ("window", "ct_window", parse_window)):
        if ctx.get_parameter_source(option) != ParameterSource.COMMANDLINE or key not in settings.config:
            continue
        value = parse(ctx.params[option])
        if value != settings.config[key]:
            raise click.UsageError(f"--{option} {ctx.params[option]} contradicts the card {like} "
                                   f"({key} {settings.config[key]}); drop --{option} or --like")
    for line in settings.describe(card):
        click.echo(line)
    return settings.config, settings.target_spacing


def parse_window(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise click.UsageError(f"--window must be LO,HI in HU (e.g. -200,250), got {text!r}") from None
    if not lo < hi:
        raise click.UsageError(f"--window: LO must be below HI, got {text!r}")
    return lo, hi
