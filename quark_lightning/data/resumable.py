"""Samplers and a DataLoader whose position inside an epoch is saved in the checkpoint and restored.

Lightning saves the `state_dict()` of a stateful training loader with the fit loop and calls
`load_state_dict()` on the new loader of a resumed run before its first batch. Here:

- a `ResumableSampler` decides the indices of a pass (an epoch) with its own `torch.Generator`, lazily,
  so a curriculum may change the sampling weights while the pass runs (`AreaWeightedSampler`) or all at
  once (`ShuffleSampler`, a permutation);
- `ResumableDataLoader` counts the batches the trainer has taken from its current iterator. Its state is
  the sampler's generator plus the rest of the current pass: the indices already decided but not yet
  consumed (a worker may have prefetched them, or a curriculum drew them with the weights of that moment)
  and how many indices are still to be drawn. It also owns the generator of the workers' base seed, so
  starting an iterator never touches the global torch RNG.

Guarantee (one process): after `load_state_dict(state_dict())`, a new loader yields exactly the batches
the original would have yielded next (the rest of the pass, then the following passes), whatever the number
of workers, provided the sampling weights are set as they were (the closed-loop callback restores them).
Under DDP Lightning replaces a `ShuffleSampler` (a RandomSampler) by its DistributedSampler and wraps an
`AreaWeightedSampler`; the loader then has no position of its own: it says so on resume, and the
epoch's data restart from the beginning of the epoch, as with a plain DataLoader.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler


def seed_from_global_rng() -> int:
    """A seed drawn from the global torch RNG (so it follows `seed_everything`), as RandomSampler does."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class ResumableSampler(Sampler[int]):
    """A sampler whose position inside a pass can be saved and restored exactly.

    Subclasses implement `draw(count)`: the next indices of the pass (at least one, at most `count`).
    """

    def __init__(self, pass_size: int, generator: torch.Generator):
        self.pass_size = pass_size
        self.generator = generator
        self._pass: list[int] = []  # indices of the current pass decided so far (from its start/resume)
        self._pass_length = 0  # indices the current pass yields in all
        self._in_pass = False
        self._prepared = False  # begin_pass() was called for the next __iter__
        self._continuation: dict[str, Any] | None = None  # a restored rest of a pass, for the next pass

    def draw(self, count: int) -> list[int]:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.pass_size

    def begin_pass(self, limit: int | None = None) -> None:
        """Start the pass the next `__iter__` yields: the restored rest of a pass if any, else a new one
        of at most `limit` indices (a loader that drops the last incomplete batch never draws its indices,
        whether or not its consumer asks for one more batch)."""
        cont, self._continuation = self._continuation, None
        if cont:
            self._pass, self._pass_length = list(cont["pending"]), int(cont["left"])
        else:
            self._pass = []
            self._pass_length = self.pass_size if limit is None else min(self.pass_size, limit)
        self._in_pass = True
        self._prepared = True

    def __iter__(self) -> Iterator[int]:
        if not self._prepared:
            self.begin_pass()
        self._prepared = False
        position = 0
        while position < self._pass_length:
            if position == len(self._pass):
                self._pass += self.draw(self._pass_length - position)
            position += 1
            yield self._pass[position - 1]

    def state_dict(self, consumed: int | None) -> dict[str, Any]:
        """State after `consumed` indices of the current pass were used; None: the pass is over."""
        if not self._in_pass:
            continuation = self._continuation
        elif consumed is None or consumed >= self._pass_length:
            continuation = None
        else:
            continuation = {"pending": self._pass[consumed:], "left": self._pass_length - consumed}
        return {"generator": self.generator.get_state(), "continuation": continuation}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._continuation = state["continuation"]
        self._in_pass = self._prepared = False


class ShuffleSampler(ResumableSampler, RandomSampler):
    """Every index once per pass, in a new random order each pass (RandomSampler without replacement).

    A RandomSampler subclass on purpose: under DDP Lightning then swaps in its DistributedSampler, as it did
    for `shuffle=True`. The generator is seeded from the global torch RNG at construction.
    """

    def __init__(self, data_source, seed: int | None = None):
        generator = torch.Generator().manual_seed(seed_from_global_rng() if seed is None else seed)
        RandomSampler.__init__(self, data_source, generator=generator)
        ResumableSampler.__init__(self, len(data_source), generator)

    def draw(self, count: int) -> list[int]:
        return torch.randperm(self.pass_size, generator=self.generator).tolist()[:count]


class _CountingIterator:
    """Passes a DataLoader iterator through and counts the batches taken from it."""

    def __init__(self, inner: Iterator, loader: ResumableDataLoader):
        self._inner, self._loader = inner, loader

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        batch = next(self._inner)
        self._loader.batches_taken += 1
        return batch

    def __len__(self) -> int:
        return len(self._inner)


class ResumableDataLoader(DataLoader):
    """A DataLoader with `state_dict` / `load_state_dict` (Lightning saves and restores it with the fit loop).

    `batches_taken` counts the batches of the current pass handed out, those before a resume included.
    Counting them as consumed holds under Lightning for a loader with a length: its fetcher then prefetches
    nothing, so a checkpoint written at a batch end has consumed every batch taken.
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("generator") is None:  # workers' base seed from our own stream, not the global RNG
            kwargs["generator"] = torch.Generator().manual_seed(seed_from_global_rng())
        super().__init__(*args, **kwargs)
        self.batches_taken = 0
        self._pass_start = 0  # batches of the pass consumed before the current iterator (a resume point)
        self._resume_at = 0  # the same, for the next iterator (set by load_state_dict)
        self._generator_before_iter: torch.Tensor | None = None  # recreates the current iterator's seed

    def __iter__(self) -> Iterator:
        if isinstance(self.sampler, ResumableSampler):  # before the workers prefetch from it
            self.sampler.begin_pass(len(self) * self.batch_size if self.drop_last else None)
        self._pass_start, self._resume_at = self._resume_at, 0
        self.batches_taken = self._pass_start
        self._generator_before_iter = self.generator.get_state()
        return _CountingIterator(super().__iter__(), self)

    def state_dict(self) -> dict[str, Any]:
        if not isinstance(self.sampler, ResumableSampler):
            return {}
        over = self.batches_taken >= len(self)
        consumed = None if over else (self.batches_taken - self._pass_start) * self.batch_size
        mid_pass = not over and self._generator_before_iter is not None
        return {
            "sampler": self.sampler.state_dict(consumed),
            # mid-pass: the state the current iterator drew its workers' base seed from, so the resumed
            # iterator draws the same one; after a pass: the state the next iterator draws from
            "generator": self._generator_before_iter if mid_pass else self.generator.get_state(),
            "batches_taken": self.batches_taken,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state or not isinstance(self.sampler, ResumableSampler):
            warnings.warn(
                "the checkpoint holds no data position for this loader (a distributed or custom sampler is in "
                "use): the interrupted epoch's data restart from its beginning",
                stacklevel=2,
            )
            return
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
        mid_pass = state["sampler"]["continuation"] is not None
        self.batches_taken = self._pass_start = self._resume_at = state["batches_taken"] if mid_pass else 0
        self._generator_before_iter = None
