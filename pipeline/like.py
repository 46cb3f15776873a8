"""``med3d-prep build-* --like CARD.json``: build a new dataset exactly as an encoder's pretraining data was built.

The card (:mod:`catalog.card`, written by ``med3d-train export``) lists the encoder's domains, each with its
recipe: target spacing (z, y, x) mm, clip percentiles or CT window, air clamp, dtype. Each domain of the new build
takes the recipe of the card domain of its modality:

- ``--like-domain NAME`` names the card domain; it must be of the build domain's modality (a "CT/MR" domain, or a
  build domain that mixes modalities, fits either).
- Otherwise the card domains of that modality are the candidates. One recipe among them (several domains that
  were built alike count as one) is taken. Several *different* recipes are refused, listing them: the encoder
  saw each at its own spacing, and an average spacing (nnU-Net-style median) would be a grid it never saw, so
  the user picks one with ``--like-domain``.
- No card domain of the modality is a :class:`catalog.card.CardError` naming the card and what it holds.

One :class:`~pipeline.config.PrepConfig` serves every domain of a build, so the chosen recipes must agree on the
fields they share (percentiles, dtype, and for CT the window and air clamp); a build of CT and MR tasks whose
recipes disagree is refused with the advice to build them in two runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from catalog.card import CardError, recipe_problem

__all__ = ["LikeSettings", "like_settings"]


@dataclass(frozen=True)
class LikeSettings:
    """What ``--like`` sets for one build."""

    target_spacing: dict[str, tuple[float, float, float]]
    """Build domain → (z, y, x) mm, for :func:`pipeline.job.build`'s ``target_spacing``."""
    config: dict[str, Any]
    """:class:`~pipeline.config.PrepConfig` fields: ``dtype``, ``clip_percentiles``, ``ct_window``, ``air_hu``,
    ``image_interpolation``."""
    chosen: dict[str, str] = field(default_factory=dict)
    """Build domain → the card domain whose recipe it takes."""

    def describe(self, card: dict[str, Any]) -> list[str]:
        """One line per build domain, for the build's log."""
        return [f"{name}: like card domain {src}: {_spacing(card['domains'][src])}, "
                f"{card['domains'][src].get('intensity_rule', '')}" for name, src in sorted(self.chosen.items())]


def _spacing(recipe: dict[str, Any]) -> str:
    return " x ".join(f"{v:g}" for v in recipe["target_spacing"]) + " mm (z, y, x)"


def _mods(modality: str) -> set[str]:
    return {m for m in str(modality).split("/") if m}


def _key(recipe: dict[str, Any]) -> tuple:
    """What decides a build's bytes, to tell recipes apart."""
    return (tuple(float(v) for v in recipe["target_spacing"]), tuple(float(p) for p in recipe["percentiles"]),
            tuple(recipe["ct_window"]) if recipe.get("ct_window") else None, float(recipe["air_hu"]),
            recipe["dtype"], recipe.get("image_interpolation", "linear"))


def _choose(card: dict[str, Any], where: str, name: str, modality: str, like_domain: str | None) -> str:
    domains = card["domains"]
    mods = _mods(modality)
    have = ", ".join(f"{n} ({d['modality']}, {_spacing(d)})" for n, d in domains.items())
    if like_domain is not None:
        if like_domain not in domains:
            raise CardError(f"--like-domain {like_domain!r} is not in {where} (its domains: {have})")
        if not _mods(domains[like_domain]["modality"]) & mods:
            raise CardError(f"--like-domain {like_domain} is {domains[like_domain]['modality']} but the domain "
                            f"{name} being built is {modality}; pick a {modality} domain of {where} ({have})")
        return like_domain
    fits = [n for n, d in domains.items() if _mods(d["modality"]) & mods]
    if not fits:
        raise CardError(f"{where} has no {modality} domain to take the preprocessing of {name} from: the weights "
                        f"were pretrained on {have}. Build {name} without --like, or use weights pretrained on "
                        f"{modality} data")
    recipes = {}
    for n in fits:
        recipes.setdefault(_key(domains[n]), n)
    if len(recipes) > 1:
        listed = "; ".join(f"{n}: {_spacing(domains[n])}, {domains[n].get('intensity_rule', '')}"
                           for n in fits)
        raise CardError(f"{where} has {len(fits)} {modality} domains preprocessed differently ({listed}); say "
                        f"which one {name} should match with --like-domain NAME")
    return fits[0]


_SHARED = {"dtype": "dtype", "clip_percentiles": "percentiles", "image_interpolation": "image_interpolation"}
_CT_ONLY = {"ct_window": "ct_window", "air_hu": "air_hu"}


def like_settings(card: dict[str, Any], domains: dict[str, str], *, like_domain: str | None = None,
                  where: str = "the card") -> LikeSettings:
    """The spacing and intensity settings for building ``domains`` (build domain name → modality: "CT", "MR" or
    "CT/MR") like ``card``'s data. ``where`` names the card file in errors. Raises :class:`CardError` when a domain
    has no fitting card domain, the choice is ambiguous, or the chosen recipes disagree on a shared setting."""
    chosen = {name: _choose(card, where, name, mod, like_domain) for name, mod in domains.items()}
    for src in sorted(set(chosen.values())):  # a card dict not read by read_card: its values become the build's
        problem = recipe_problem(card["domains"][src])
        if problem:
            raise CardError(f"{where}: domain {src!r}: {problem}; the card is damaged, export the weights again")
    config: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name, src in chosen.items():
        recipe = card["domains"][src]
        ct = "CT" in _mods(domains[name]) and "CT" in _mods(recipe["modality"])
        fields = {**_SHARED, **(_CT_ONLY if ct else {})}
        for cfg_key, recipe_key in fields.items():
            value = recipe[recipe_key]
            value = tuple(float(v) for v in value) if isinstance(value, list) else value
            if cfg_key in config and config[cfg_key] != value:
                raise CardError(f"the card domains {source[cfg_key]} and {src} differ in {recipe_key} "
                                f"({config[cfg_key]} vs {value}), but one build applies one setting: build "
                                f"{name} in a separate run (e.g. the CT tasks apart from the MR ones)")
            config.setdefault(cfg_key, value)
            source.setdefault(cfg_key, src)
    spacing = {name: tuple(float(v) for v in card["domains"][src]["target_spacing"])
               for name, src in chosen.items()}
    return LikeSettings(target_spacing=spacing, config=config, chosen=chosen)
