"""A model's data recipe: the extraction and segmentation options that made the rows it learned from
(and, under ``train``, where its FAKE examples came from: labels or self-blends, ``fakes=``).

A classifier trained on windows of every second frame, 64-px crops or a given track rule scores
garbage on rows made any other way, and nothing downstream would notice. So the model directory
records its recipe (``model.json`` -> ``recipe``), and every path that scores with it (``score``,
``rescore``, ``score-video``) extracts and segments with that recipe, says which options a user
changed on purpose, and refuses existing rows made another way.

The option lists here are the ones whose hash marks the rows of each step (``config_hash``): both
come from the ``rows=True`` of each option's declaration, so "changes the rows" and "belongs to the
recipe" cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from dfpipe import config as C
from dfpipe.jobs import extract as extract_job
from dfpipe.jobs import segment as segment_job
from dfpipe.segment.windows import SplitRule

# The options of each list are those their job declares with ``rows=True`` (:func:`dfpipe.config.option`).
# Every extraction option that changes the face rows.
EXTRACT_OPTIONS = extract_job.OUTPUT_FIELDS

# Row-changing extraction options added after models and rows were first recorded, each with the
# value that makes the rows as dfpipe did before it existed (their ``before=``). A recipe or an
# extraction's config without one holds that value, and a config holding it hashes as before the
# option existed: an old model scores with the rows it learned from, and old rows keep their config_hash.
ADDED = C.added(extract_job.ExtractConfig)


def with_added(options: dict) -> dict:
    """``options`` with every option of :data:`ADDED` it lacks set to the value it had before."""
    return {**ADDED, **options}


# Segmentation options that assign splits (recorded beside the recipe: they change no window).
SPLIT_OPTIONS = C.row_fields(SplitRule)

# Every segmentation option that changes which windows exist and which count.
WINDOW_OPTIONS = tuple(k for k in segment_job.OUTPUT_FIELDS if k not in SPLIT_OPTIONS)


class RecipeError(ValueError):
    """Rows or a model that do not follow a recipe; the message names each option and both values."""


def _plain(value: Any) -> Any:
    """Tuples and lists compare equal, as they do after a JSON round trip."""
    return json.loads(json.dumps(value))


def build(extract_config: dict, segment_config: dict) -> dict:
    """The recipe from the resolved configs of the extraction and segmentation a model learned from."""
    missing = [f"extract.{k}" for k in EXTRACT_OPTIONS if k not in extract_config]
    missing += [f"segment.{k}" for k in WINDOW_OPTIONS if k not in segment_config]
    if missing:
        raise RecipeError(
            f"the training data's configs lack {', '.join(missing)} (made by an older dfpipe): "
            "extract and segment them again"
        )
    return {
        "extract": {k: _plain(extract_config[k]) for k in EXTRACT_OPTIONS},
        "segment": {k: _plain(segment_config[k]) for k in WINDOW_OPTIONS},
    }


def of_model(meta: dict, model: str) -> dict:
    """The recipe recorded in a model's ``model.json``."""
    recipe = meta.get("recipe")
    if not isinstance(recipe, dict) or not {"extract", "segment"} <= set(recipe):
        raise RecipeError(
            f"model {model} records no data recipe (trained by an older dfpipe), so the options its rows "
            "were made with are unknown: train it again"
        )
    return {**recipe, "extract": with_added(recipe["extract"])}


def differences(expected: dict, actual: dict) -> list[tuple[str, Any, Any]]:
    """``(option, expected value, actual value)`` for every option of ``expected`` that ``actual`` sets otherwise."""
    return [
        (k, v, actual.get(k, "<unset>"))
        for k, v in expected.items()
        if _plain(actual.get(k, "<unset>")) != _plain(v)
    ]


def describe(diffs: list[tuple[str, Any, Any]], section: str, first: str, second: str) -> str:
    """``extract.frame_stride: recipe 2, extraction 1; ...``"""
    return "; ".join(f"{section}.{k}: {first} {a!r}, {second} {b!r}" for k, a, b in diffs)


def resolve(recipe: dict, overrides: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """The options to extract and segment with: the recipe, then the user's overrides.

    Returns the options per section and one line per option that differs from the recipe, for
    the run to print (an override is allowed, never silent).
    """
    out, notes = {}, []
    for section in ("extract", "segment"):
        given = overrides.get(section) or {}
        out[section] = {**recipe[section], **given}
        # Operational options (workers, CPUs, limits that change no row) are free to set.
        changed = differences({k: recipe[section][k] for k in given if k in recipe[section]}, given)
        notes += [f"{section}.{k}: model's recipe {a!r}, given {b!r}" for k, a, b in changed]
    return out, notes
