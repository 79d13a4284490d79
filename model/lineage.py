"""Stable topic identities across snapshots, and the lineage events between them.

The model has K topic *slots*; what a slot means can change (a dead cluster is re-seeded on a new
theme). :class:`TopicTracker` gives each slot a *stable id* that survives as long as the slot keeps
being the same topic: successive snapshots are matched by Hungarian assignment on the cosine
similarity of topic vectors (cluster centroids), and a pair below ``match_threshold`` is a new
identity. Life is separate from identity: a topic is *alive* while its cluster holds a fair share
of the stream. Events:

- ``born``: a young id (created at most ``birth_horizon`` snapshots earlier: a slot that took a new
  theme, or one of the first snapshot's topics) becomes alive for the first time;
- ``grew``: an id that lived below the life threshold for longer than that becomes alive for the
  first time (a small topic crossing the line, not a new theme);
- ``revived``: an id that died becomes alive again (a topic near the life threshold, not a new one);
- ``died``: an alive id stayed not alive for ``death_horizon`` snapshots, or its slot became
  another topic;
- ``merged_into``: an id that lost its slot is close (``related_threshold``) to another live topic;
- ``split_from``: a new id is close to a topic that kept its own slot;
- ``renamed``: an id's top words changed by more than half (Jaccard of the top words < 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from xtream.model.vectors import unit_rows

__all__ = ["LineageEvent", "TopicTracker"]


@dataclass(frozen=True)
class LineageEvent:
    kind: str                     # born | grew | revived | died | merged_into | split_from | renamed | prevalence_jump
    topic_id: int
    related_topic_id: int | None = None
    words: tuple[str, ...] = ()
    previous_words: tuple[str, ...] = ()


@dataclass
class _Tracked:
    vector: np.ndarray
    words: tuple[str, ...]
    alive: bool = False
    ever_alive: bool = False
    not_alive_streak: int = 0
    retired: bool = False
    age: int = 0   # snapshots since the id was created
    lived: int = 0   # snapshots alive since it last came to life


@dataclass
class TopicTracker:
    """Assigns stable ids to topic slots snapshot after snapshot; ``update`` returns the events."""

    match_threshold: float = 0.7
    related_threshold: float = 0.5
    death_horizon: int = 3
    rename_jaccard: float = 0.5
    birth_horizon: int = 3
    next_id: int = 0
    slot_ids: list[int] = field(default_factory=list)
    tracked: dict[int, _Tracked] = field(default_factory=dict)

    def update(self, vectors: np.ndarray, alive: np.ndarray,
               words: list[tuple[str, ...]]) -> tuple[list[int], list[LineageEvent]]:
        """``vectors`` (K, d) topic vectors, ``alive`` (K,) bools, ``words`` top words per slot.

        Returns the stable id of every slot and the lineage events of this step.
        """
        vectors = unit_rows(np.asarray(vectors, dtype=np.float64))
        alive = np.asarray(alive, dtype=bool)
        k = len(vectors)
        events: list[LineageEvent] = []
        ids = [-1] * k
        prev_ids = [i for i in self.slot_ids if i in self.tracked and not self.tracked[i].retired]
        if prev_ids:
            prev_vecs = np.stack([self.tracked[i].vector for i in prev_ids])
            sim = prev_vecs @ vectors.T
            rows, cols = linear_sum_assignment(-sim)
            for r, c in zip(rows, cols):
                if sim[r, c] >= self.match_threshold:
                    ids[c] = prev_ids[r]
            lost = [prev_ids[r] for r in range(len(prev_ids)) if prev_ids[r] not in ids]
        else:
            sim, lost = np.zeros((0, k)), []
        # Identities that lost their slot: merged into a close live topic, or died.
        for pid in lost:
            t = self.tracked[pid]
            r = prev_ids.index(pid)
            best = int(np.argmax(sim[r])) if k else -1
            if t.ever_alive and not t.retired:
                if best >= 0 and sim[r, best] >= self.related_threshold and ids[best] >= 0 and ids[best] != pid:
                    events.append(LineageEvent("merged_into", pid, ids[best], previous_words=t.words))
                elif t.alive:
                    events.append(LineageEvent("died", pid, previous_words=t.words))
            t.retired = True
        # New identities for unmatched slots; a close, still-matched old topic means a split.
        for c in range(k):
            if ids[c] >= 0:
                continue
            ids[c] = self.next_id
            self.next_id += 1
            self.tracked[ids[c]] = _Tracked(vector=vectors[c], words=tuple(words[c]))
            if len(prev_ids):
                r = int(np.argmax(sim[:, c]))
                parent = prev_ids[r]
                if sim[r, c] >= self.related_threshold and parent in ids and parent != ids[c]:
                    events.append(LineageEvent("split_from", ids[c], parent, words=tuple(words[c])))
        self._live(ids, alive, words, vectors, events)
        self.slot_ids = ids
        for tid in [i for i, t in self.tracked.items() if t.retired]:
            del self.tracked[tid]
        return ids, events

    def _live(self, ids: list[int], alive: np.ndarray, words: list[tuple[str, ...]], vectors: np.ndarray,
              events: list[LineageEvent]) -> None:
        """Life of the matched slots: births, deaths after the horizon, renames."""
        for c, tid in enumerate(ids):
            t = self.tracked[tid]
            new_words = tuple(words[c])
            if t.ever_alive and t.words and new_words:
                a, b = set(t.words), set(new_words)
                if len(a & b) / max(len(a | b), 1) < self.rename_jaccard:
                    events.append(LineageEvent("renamed", tid, words=new_words, previous_words=t.words))
            t.vector, t.words = vectors[c], new_words
            if alive[c]:
                if not t.alive:   # first life, or back after dying
                    first = "born" if t.age <= self.birth_horizon else "grew"
                    events.append(LineageEvent("revived" if t.ever_alive else first, tid, words=new_words))
                    t.lived = 0
                t.alive, t.ever_alive, t.not_alive_streak = True, True, 0
                t.lived += 1
            elif t.alive:
                t.not_alive_streak += 1
                if t.not_alive_streak >= self.death_horizon:
                    events.append(LineageEvent("died", tid, previous_words=new_words))
                    t.alive = False
            t.age += 1

    def alive_ids(self) -> list[int]:
        return [i for i in self.slot_ids if self.tracked[i].alive]

    def settled_ids(self) -> set[int]:
        """Ids alive for more than ``birth_horizon`` snapshots in a row: topics whose words have had
        time to settle, so their drift means change (a topic that just came to life has none yet)."""
        return {i for i in self.slot_ids if self.tracked[i].alive and self.tracked[i].lived > self.birth_horizon}

    def state_dict(self) -> dict[str, Any]:
        return {"match_threshold": self.match_threshold, "related_threshold": self.related_threshold,
                "death_horizon": self.death_horizon, "rename_jaccard": self.rename_jaccard,
                "birth_horizon": self.birth_horizon,
                "next_id": self.next_id, "slot_ids": list(self.slot_ids),
                "tracked": {str(i): {"vector": t.vector.copy(), "words": list(t.words), "alive": t.alive,
                                     "ever_alive": t.ever_alive, "not_alive_streak": t.not_alive_streak,
                                     "age": t.age, "lived": t.lived}
                            for i, t in self.tracked.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.match_threshold = state["match_threshold"]
        self.related_threshold = state["related_threshold"]
        self.death_horizon = state["death_horizon"]
        self.rename_jaccard = state["rename_jaccard"]
        self.birth_horizon = int(state.get("birth_horizon", 3))
        self.next_id = int(state["next_id"])
        self.slot_ids = [int(i) for i in state["slot_ids"]]
        self.tracked = {int(i): _Tracked(vector=np.asarray(t["vector"], dtype=np.float64), words=tuple(t["words"]),
                                         alive=bool(t["alive"]), ever_alive=bool(t["ever_alive"]),
                                         not_alive_streak=int(t["not_alive_streak"]),
                                         age=int(t.get("age", self.birth_horizon + 1)),
                                         lived=int(t.get("lived", self.birth_horizon + 1 if t["alive"] else 0)))
                        for i, t in state["tracked"].items()}
