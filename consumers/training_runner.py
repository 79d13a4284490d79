"""The trainer: when and where the model's gradient steps run.

Every ``train_every_docs`` documents a bounded training slice is due. With ``train_in_background``
it runs on a worker thread at a lower priority (``train_nice``), as a batch job
(``train_batch_scheduling``) and within a duty cycle (``train_max_share``), so that ingestion gets
the CPU first; slices requested while one runs coalesce. When that thread falls behind, the loop
pays the training debt itself (:mod:`consumers.training_debt`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from xtream.consumers.backpressure import DutyCycle
from xtream.consumers.config import Settings
from xtream.consumers.metrics import ServiceMetrics
from xtream.consumers.training_debt import TrainingDebt
from xtream.errors import ModelError
from xtream.model.online import OnlineTopicModel

__all__ = ["TrainingRunner", "observe_model", "yield_to_ingestion"]

logger = logging.getLogger(__name__)


def observe_model(metrics: ServiceMetrics, model: OnlineTopicModel, steps: int) -> None:
    """Training steps and losses, buffer and vocabulary sizes, version and documents of ``model``."""
    m = metrics
    m.training_steps.inc(steps)
    losses = model.last_losses
    if losses:
        m.training_loss.labels("total").set(losses.get("total", 0.0))
        m.training_loss.labels("reconstruction_kl").set(sum(v for k, v in losses.items() if k.startswith("recon_kl_")))
        for part in ("cluster", "infonce", "beta"):
            m.training_loss.labels(part).set(losses.get(part, 0.0))
    sizes = model.sizes()   # called from the trainer thread too: read under the model's lock
    for lang, n in sizes["buffer"].items():
        m.buffer_documents.labels(lang).set(n)
    for lang, words in sizes["vocabulary"].items():
        m.vocabulary_words.labels(lang).set(words)
    m.model_version.set(model.version)
    m.model_documents.set(model.n_docs)


def yield_to_ingestion(nice: int, batch_scheduling: bool) -> None:
    """Lower the calling thread's claim on the CPU (Linux; per thread, as the thread id names the
    thread): ``nice`` more niceness, and with ``batch_scheduling`` the SCHED_BATCH policy, under which
    the thread keeps its share but is not scheduled ahead of threads that wake up. A refusal is logged."""
    tid = threading.get_native_id()
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        except (OSError, AttributeError) as exc:
            logger.warning("cannot lower the training thread's priority: %s", exc)
    if batch_scheduling:
        try:
            os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
        except (OSError, AttributeError) as exc:
            logger.warning("cannot schedule the training thread as a batch job: %s", exc)


class TrainingRunner:
    """Runs the model's training slices, on the loop's thread or on a background one.

    ``stopping`` says the service is stopping (a debt payment ends early); ``on_slice(steps)`` is
    called after each slice with the steps it ran; ``worker`` is what the background thread runs
    (default: :meth:`work`).
    """

    def __init__(self, settings: Settings, model: OnlineTopicModel, metrics: ServiceMetrics, *,
                 stopping: Callable[[], bool], on_slice: Callable[[int], None],
                 worker: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.model = model
        self.metrics = metrics
        self._stopping = stopping
        self._on_slice = on_slice
        self._worker = worker or self.work
        m = settings.model
        self.debt = TrainingDebt(m.train_steps / m.train_every_docs, m.warmup_within_docs, m.max_training_debt_steps)
        self.docs_since_train = 0
        self._due = threading.Event()
        #: Set to end the background thread (and cut a running slice short).
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._duty = DutyCycle(m.train_max_share)
        self._lock = threading.Lock()   # one slice at a time: the trainer's, or the loop paying debt

    def learned(self, documents: int) -> None:
        """Count documents learned towards the next slice."""
        self.docs_since_train += documents

    def maybe_train(self) -> None:
        """Every ``train_every_docs`` documents, a bounded training slice.

        With ``train_in_background`` the slice runs on a worker thread, so the gradient steps of
        one core overlap the embedding of the next batch on the other (each holds the model lock
        only for one step); slices requested while one runs coalesce, so training adapts to the
        CPU left over instead of stalling consumption.
        """
        m = self.settings.model
        self.metrics.training_debt.set(self.debt.steps(self.model))
        if self.model.is_initialised and self.debt.overdue(self.model):   # the trainer fell behind
            # A running slice is paying already: intake queues behind it only when the warm-up is late
            # or, once the model is warm, the debt is past twice its bound.
            far = self.debt.overdue(self.model, factor=2.0) if self.model.is_warm else self.debt.late(self.model)
            self.train_slice(pay_debt=True, wait=far)
            return
        if not self.model.is_initialised or self.docs_since_train < m.train_every_docs:
            return
        if not m.train_in_background:
            if self._duty.ready(time.monotonic()):
                self.docs_since_train = 0
                self.train_slice()
            return
        self.docs_since_train = 0
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="xtream-train", daemon=True)
            self._thread.start()
        self._due.set()

    def settle(self) -> None:
        """Pay what the model is owed now, on the calling thread (before a snapshot): each snapshot
        of XTRA's topics then shows a model trained for every document it learned, however the
        background thread was scheduled, so two snapshots differ by the stream, not by when training
        happened. During the warm-up a snapshot shows the clusters' topics, which owe nothing to
        training: the warm-up's steps are left to the background thread and to the debt's bound."""
        if self.model.is_warm and not self.stop_event.is_set() and self.debt.steps(self.model) >= 1:
            self.train_slice(pay_debt=True)

    def work(self) -> None:
        """The background thread: a slice whenever one is due and the duty cycle allows, until stopped."""
        m = self.settings.model
        yield_to_ingestion(m.train_nice, m.train_batch_scheduling)
        while not self.stop_event.is_set():
            rest = self._duty.wait_seconds(time.monotonic())
            if rest > 0:
                self.stop_event.wait(min(rest, 0.2))
                continue
            if self._due.wait(0.2) and not self.stop_event.is_set():
                self._due.clear()
                try:
                    self.train_slice()
                except ModelError:
                    logger.exception("training slice failed; the model keeps its last good state")

    def stop(self) -> None:
        """End the background thread (waiting for its slice) and start no other."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None

    def train_slice(self, pay_debt: bool = False, wait: bool = True) -> None:
        """``train_steps`` steps, cut short past ``train_budget_seconds`` or at shutdown.

        The model locks itself per step and serves inference from its last published copy, so
        this does not hold the service lock: the loop keeps consuming while gradients are computed.
        With ``pay_debt`` (the loop's own thread, the trainer having fallen behind) the slice runs
        until the training debt is paid, with no time budget: intake waits (:mod:`consumers.training_debt`).
        One slice runs at a time; without ``wait`` nothing runs if another slice is running.
        """
        m = self.settings.model
        if not self._lock.acquire(blocking=wait):
            return
        try:
            with self.metrics.stage_seconds.labels("train").time():
                started = time.monotonic()
                deadline = started + m.train_budget_seconds
                if pay_debt:
                    done = self.debt.pay(self.model, stop=lambda: self._stopping() or self.stop_event.is_set())
                else:
                    done = self.model.train(m.train_steps,
                                            stop=lambda: time.monotonic() >= deadline or self.stop_event.is_set()).steps
        finally:
            self._lock.release()
        self._on_slice(done)
        if not pay_debt:
            self._duty.ran(started, time.monotonic())
        observe_model(self.metrics, self.model, done)
        self.metrics.training_debt.set(self.debt.steps(self.model))
