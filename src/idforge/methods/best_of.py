"""Best-of-N: N candidates with seeds seed..seed+N-1, ranked by identity score; the best one is the result.

Candidates run `best_of_batch` at a time through the method's own batched path (image i of a batch uses seed+i).
A batched UNet call differs from a single one by float rounding (~1e-6), so when the winner came from a batch of
more than one it is generated once more alone: the returned image is then bit-identical to a plain run at its seed,
and its recipe (seed, num_images 1) reproduces it. Ranking: highest score first, ties by lower seed; candidates
with no scorable face rank last. The recipe's `best_of` holds the ranking (seed, score) of every candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from idforge.engine.recipe import Recipe
from idforge.engine.result import GenerationResult
from idforge.engine.seeds import image_seeds, resolve_seed
from idforge.engine.session import Engine

ProgressCallback = Callable[[int, int], None]
Generate = Callable[[Engine, Any, ProgressCallback | None], GenerationResult]


def _with_generation(request: Any, **changes: Any) -> Any:
    return dataclasses.replace(request, generation=dataclasses.replace(request.generation, **changes))


def rank(candidates: list[tuple[int, float | None, str]]) -> list[tuple[int, float | None, str]]:
    """(seed, score, status) sorted best first: scored by score descending then seed; unscored last by seed."""
    return sorted(candidates, key=lambda c: (c[1] is None, -(c[1] or 0.0), c[0]))


def generate_best_of(
    engine: Engine, generate: Generate, request: Any, progress: ProgressCallback | None = None
) -> GenerationResult:
    """Run `generate` (a method's generate_* function) for N seeds and return the best candidate's result."""
    gen = request.generation
    count, batch = gen.best_of, min(gen.best_of_batch, gen.best_of)
    seeds = image_seeds(resolve_seed(gen.seed), count)
    steps_per_image = gen.steps
    total = steps_per_image * count
    done = 0

    def step_progress(offset: int, size: int) -> ProgressCallback | None:
        """Overall progress in image-steps: a step of a batch of `size` advances `size` image-steps."""
        if progress is None:
            return None
        return lambda step, _total: progress(min(offset + step * size, total), total)

    candidates: list[tuple[int, float | None, str]] = []
    chunks: dict[int, tuple[GenerationResult, int, int]] = {}  # seed -> (result, index in it, chunk size)
    for start in range(0, count, batch):
        chunk = seeds[start : start + batch]
        chunk_size = len(chunk)
        result = generate(
            engine,
            _with_generation(request, seed=chunk[0], num_images=chunk_size, best_of=1),
            step_progress(done, chunk_size),
        )
        done += steps_per_image * chunk_size
        for index, seed in enumerate(chunk):
            item = result.identity.images[index]
            candidates.append((seed, item.score, item.status))
            chunks[seed] = (result, index, chunk_size)
    ranking = rank(candidates)
    best_seed = ranking[0][0]
    result, index, chunk_size = chunks[best_seed]
    rerun = chunk_size > 1
    if rerun:  # the winner alone: bit-identical to a plain run at its seed
        # progress stays at "all candidates done" but is still called every step (the server cancels there)
        hold = None if progress is None else (lambda step, _total: progress(total, total))
        result = generate(engine, _with_generation(request, seed=best_seed, num_images=1, best_of=1), hold)
    recipe = Recipe.from_dict(result.recipe)
    if not rerun:
        recipe.generation |= {"seed": best_seed, "num_images": 1}
        recipe.seeds = [best_seed]
    recipe.sections["best_of"] = {
        "n": count,
        "first_seed": seeds[0],
        "batch_size": batch,
        "chosen_seed": best_seed,
        "winner_rerun_alone": rerun,
        "ranking": [
            {"seed": s, "score": None if v is None else round(v, 6), "status": st} for s, v, st in ranking
        ],
    }
    result.recipe = recipe.to_dict()
    if ranking[0][1] is None:
        result.warnings.append(
            f"best-of-{count}: no candidate had a face to score; returning the first seed {best_seed}"
        )
    if progress is not None:
        progress(total, total)
    return result
