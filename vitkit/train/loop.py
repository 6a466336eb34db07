"""`vitkit train`: one function from a RunConfig to a finished run folder.

Exact resumption rests on three rules: data order and augmentation are functions of (seed, epoch,
index); checkpoints are taken only at optimizer-step boundaries, with the global RNG state; and the
learning rate is a function of the step alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import devices, rng
from ..checkpoint import (load_state, load_state_dict_checked, load_weights, model_meta, read_safetensors, save_state,
                          save_weights)
from ..config import RunConfig, build_config, save_config
from ..data.datasets import EpochBatches, build_data, make_loader, measure_loader
from ..data.sources import warn_skipped
from ..devices import resolve_device
from ..errors import VitkitError
from ..files import atomic_write_text, remove_stale_temporaries
from ..models import build_model, count_params, model_config
from ..models.compiled import compiled
from ..models.config import to_pair
from ..machine import describe
from ..precision import DTYPES, choose
from ..run_dir import RunDir
from .distributed import DistContext, agree_on, dist_backend, init_distributed, shutdown_distributed
from .fit_data import size_warning
from .objectives import objective_for
from .optim import EMA, build_optimizer, lr_at, warmup_steps
from .run_log import MetricsLog, plot_curves

class Trainer:
    """Holds the state of one run; `run()` trains to the end or until `request_stop()` (or Ctrl-C)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, progress: bool | None = None,
                 on_step: Callable[["Trainer"], None] | None = None, dist: DistContext | None = None,
                 device: torch.device | None = None, defer_host_reads: bool | None = None):
        """`defer_host_reads`: keep the step's loss, accuracy counts and finiteness on the device and read
        them at logging and checkpoint steps only (default: on CUDA, where each read stalls the GPU)."""
        self.cfg, self.folder, self.resume = cfg, RunDir(run_dir), resume
        self.dist = dist or DistContext()
        self.device = device or resolve_device(cfg.train.device)
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.dist.is_main
        self.on_step = on_step
        self.stop_requested = False
        self.defer_host_reads = defer_host_reads

    def request_stop(self) -> None:
        """Finish the current step, save `last`, and return (what Ctrl-C does)."""
        self.stop_requested = True

    # --- setup ----------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        devices.configure(self.device, t.deterministic)
        self.precision, self.precision_reason = choose(t.precision, self.device)
        self.amp_dtype = DTYPES[self.precision]
        torch.manual_seed(rng.seed_for(t.seed, "init"))
        self.local_batch = self.dist.local_batch(t.batch_size)
        self.local_eval_batch = -(-t.eval_batch_size // self.dist.world_size)
        model = self._pretrained_model() if t.init else self._new_model()
        self.objective = objective_for(t.objective, self.data.num_classes, cfg.aug, self.data.pre)
        model = self.objective.build(model)
        self.workers = devices.loader_workers(cfg.data.num_workers, self.device)
        self.pin = devices.pin_memory(self.device)
        # FSDP moves each shard to the device itself: the whole model never sits on one GPU
        self.model = model if t.fsdp else model.to(self.device)
        self.model_cfg = model.cfg
        self.params = count_params(self.model_cfg)
        if t.grad_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise VitkitError(f"train.grad_checkpointing: {type(model).__name__} does not support it")
            model.set_grad_checkpointing(True)
        if t.fsdp and t.ema_decay > 0:
            raise VitkitError("train.ema_decay with train.fsdp is not supported: the EMA would need its own shards")
        if t.fsdp and t.compile:
            raise VitkitError("train.compile with train.fsdp is not supported: compile runs without FSDP, or DDP")
        self.net = self._wrap(self.model)
        if t.compile:  # only the training steps: evaluation and checkpoints use the plain module
            self.net = compiled(self.net)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        if self.data.stream is not None:
            from ..data.shards import ShardStream

            self.sampler = ShardStream(self.data.stream, self.data.train.transform, self.local_batch, t.seed,
                                       cfg.data.shuffle_buffer, self.dist.rank, self.dist.world_size,
                                       self.workers)
        else:
            self.sampler = EpochBatches(len(self.data.train), t.batch_size, t.seed, shuffle=True,
                                        drop_last=len(self.data.train) > t.batch_size or self.dist.enabled,
                                        rank=self.dist.rank, world_size=self.dist.world_size)
        self.batches_per_epoch = len(self.sampler)
        if self.batches_per_epoch == 0:
            raise VitkitError(f"{cfg.data.spec}: {self.data.train_size} training images make no full batch of "
                              f"{self.local_batch} per process")
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.optim.accum_steps)
        self.total_steps = t.epochs * self.steps_per_epoch
        self.warmup = warmup_steps(cfg.optim, self.steps_per_epoch)
        self.ema = EMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        # Deferred host reads need an optimizer that skips a step on the device (found_inf: the fused ones)
        wanted = self.device.type == "cuda" if self.defer_host_reads is None else self.defer_host_reads
        self.defer = bool(wanted and self.optimizer.defaults.get("fused") and t.precision != "fp16")
        self.bad_steps = torch.zeros((), dtype=torch.int64, device=self.device)  # non-finite steps, on the device
        self.bad_steps_seen = 0
        # fp16 needs loss scaling; GradScaler finds the scale by trial: an overflow skips that step and halves it
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best_acc, self.best_loss, self.best_step = -1.0, float("inf"), 0
        self.skipped: set[str] = set()
        self.nonfinite_skipped = self.overflow_skipped = 0
        self.running = {"loss": 0.0, "correct": 0, "seen": 0, "images": 0}
        if self.resume:
            if self.dist.is_main:
                remove_stale_temporaries(self.folder.checkpoints)
            self._load_state()
        name = f"init:{Path(t.init).name}" if t.init else self.cfg.model_name
        self.meta = {"model_name": name, "classes": self.data.classes, "objective": t.objective,
                     "preprocess": self.data.pre.to_dict(), "data": cfg.data.spec}

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the steps run through: the model itself, DDP around it, or FSDP shards of it."""
        if self.cfg.train.fsdp:
            if not self.dist.enabled:
                raise VitkitError("train.fsdp=true needs several processes: launch with torchrun --nproc_per_node N")
            from .fsdp import shard_model

            return shard_model(model, self.device, self.dist.world_size, self.amp_dtype)
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _new_model(self) -> nn.Module:
        cfg = self.cfg
        overrides = cfg.model_overrides
        base = model_config(cfg.model_name, **overrides)
        self.data = build_data(cfg.data, cfg.aug, base.img_size, overrides.get("in_chans"), cfg.train.seed)
        if "num_classes" in overrides and overrides["num_classes"] != self.data.num_classes:
            raise VitkitError(f"model.num_classes={overrides['num_classes']} but {cfg.data.spec} has "
                              f"{self.data.num_classes} classes")
        return build_model(base.replace(num_classes=self.data.num_classes, in_chans=self.data.pre.in_chans))

    def _pretrained_model(self) -> nn.Module:
        """Fine-tuning (paper 3.2, B.1.1): load `train.init`, resample positions to the new size, new zero head."""
        from ..interop import POST_LOAD, load_model

        cfg, t = self.cfg, self.cfg.train
        overrides = cfg.model_overrides
        model = load_model(t.init, **{k: v for k, v in overrides.items() if k not in POST_LOAD})
        pre = model.pretrained_cfg.get("preprocess", {})
        img_size = to_pair(overrides.get("img_size", model.cfg.img_size))
        self.data = build_data(cfg.data, cfg.aug, img_size, model.cfg.in_chans, t.seed,
                               mean=pre.get("mean"), std=pre.get("std"))
        if img_size != tuple(model.cfg.img_size):
            if hasattr(model, "set_img_size"):
                model.set_img_size(img_size, mode=overrides.get("resample"))
            else:
                model.cfg = model.cfg.replace(img_size=img_size)
        if not t.keep_head or model.num_classes != self.data.num_classes:
            model.reset_classifier(self.data.num_classes)
        return model

    # --- checkpoints ---------------------------------------------------------------------------------
    def _model_state(self) -> dict[str, torch.Tensor]:
        if self.cfg.train.fsdp:
            from .fsdp import full_model_state

            return full_model_state(self.model)
        return self.model.state_dict()

    def _state(self) -> dict[str, Any]:
        if self.cfg.train.fsdp:
            from .fsdp import full_optimizer_state

            optim_state = full_optimizer_state(self.model, self.optimizer)
        else:
            optim_state = self.optimizer.state_dict()
        return {"model": self._model_state(), "optimizer": optim_state, "step": self.step,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rng": devices.rng_state(self.device),
                "ema": self.ema.shadow if self.ema else None, "best_acc": self.best_acc, "best_loss": self.best_loss, "best_step": self.best_step,
                "running": self._running_host(), "skipped": sorted(self.skipped),
                "overflow_skipped": self.overflow_skipped,
                "scaler": self.scaler.state_dict() if self.scaler else None}

    def _load_state(self) -> None:
        st = load_state(self.folder.last_state)
        if self.cfg.train.fsdp:
            from .fsdp import load_full_state

            load_full_state(self.model, self.optimizer, st["model"], st["optimizer"])
        else:
            load_state_dict_checked(self.model, st["model"], str(self.folder.last_state))
            self.optimizer.load_state_dict(st["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
        self.best_acc, self.best_loss, self.best_step = st["best_acc"], st["best_loss"], st["best_step"]
        self.running, self.skipped = st["running"], set(st["skipped"])
        if self.ema and st["ema"] is not None:
            self.ema.shadow = {k: v.to(self.device) for k, v in st["ema"].items()}  # saved on the CPU
        if self.scaler and st["scaler"]:
            self.scaler.load_state_dict(st["scaler"])
        self.overflow_skipped = st.get("overflow_skipped", 0)
        devices.set_rng_state(st["rng"], self.device)

    def eval_model(self) -> nn.Module:
        """The weights to evaluate: the EMA if kept, else the model itself (under FSDP its shards, which
        every process runs in step: no process builds a whole copy)."""
        if self.ema is None:
            return self.model
        return self._copy_with(self.ema.shadow, self.device)

    def _copy_with(self, state: dict[str, torch.Tensor], device: torch.device) -> nn.Module:
        shadow = self.objective.build(build_model(self.model_cfg)).to(device)
        shadow.load_state_dict(state)
        return shadow

    def _published(self, gathered: dict[str, torch.Tensor] | None = None) -> nn.Module | None:
        """What the weights files hold (the EMA if kept), on the first process; None on the others. Under
        FSDP every process takes part in gathering the full state (unless `gathered` already holds it),
        which only the first receives, on the CPU."""
        if self.ema is not None:
            model = self._copy_with(self.ema.shadow, torch.device("cpu")) if self.dist.is_main else None
        elif self.cfg.train.fsdp:
            state = gathered if gathered is not None else self._model_state()
            model = self._copy_with(state, torch.device("cpu")) if self.dist.is_main else None
        else:
            model = self.model
        return self.objective.publish(model) if model is not None else None

    def save_last(self) -> None:
        """Every process gathers (FSDP needs all of them); only the first writes; all wait for the write.
        Weights first, then the resume state: whenever a state exists, its weights file exists too."""
        self._check_deferred()
        state = self._state()
        model = self._published(state["model"] if self.cfg.train.fsdp else None)
        if self.dist.is_main:
            save_weights(self.folder.last_weights, model,
                         model_meta(self.model, step=self.step, epoch=self.epoch, **self.meta))
            save_state(self.folder.last_state, state)
        self.dist.barrier()

    # --- one optimisation step -------------------------------------------------------------------------
    def _forward_backward(self, batch: dict, sync: bool) -> tuple[str, float, int, int, int]:
        """Forward; then every process agrees whether to go on ("ok"), skip the batch ("empty": some
        process had no readable image) or stop ("nonfinite"), so none waits on a backward the others skip.
        `sync=False` (an accumulation micro-batch) keeps DDP from all-reducing gradients yet."""
        cfg = self.cfg
        loss, correct, n, images, loss_t = float("nan"), 0, 0, 0, None
        with contextlib.nullcontext() if sync else self._no_gradient_sync():
            if batch["x"] is not None:
                x, y = (batch[k].to(self.device, non_blocking=self.pin) for k in ("x", "y"))
                images = len(y)
                g = rng.generator(cfg.train.seed, self.objective.rng_purpose, self.epoch, self.batch_in_epoch)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    out = self.objective.batch_loss(self.net, x, y, g)
                loss_t, correct, n = out.loss, out.correct, out.count
                if self.defer:  # read at the next logging step; a non-finite loss is caught by the gradient norm
                    loss = loss_t.detach().float()
                else:
                    loss, correct = loss_t.item(), int(correct)
            has = loss_t is not None
            finite = loss_t is None or self.defer or math.isfinite(loss)
            if self.dist.enabled:
                n_has, n_bad = self.dist.sum([float(has), float(not finite)])
                has, finite = n_has == self.dist.world_size, n_bad == 0
            verdict = "nonfinite" if not finite else "ok" if has else "empty"
            if verdict == "ok":
                scaled = loss_t / cfg.optim.accum_steps
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return verdict, loss, correct, n, images

    @contextlib.contextmanager
    def _no_gradient_sync(self):
        """An accumulation micro-batch: gradients stay local (DDP's no_sync; FSDP skips its reduce-scatter)."""
        if hasattr(self.net, "no_sync"):
            with self.net.no_sync():
                yield
        elif hasattr(self.net, "set_requires_gradient_sync"):
            self.net.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.net.set_requires_gradient_sync(True)
        else:
            yield

    def _optimizer_step(self) -> float:
        lr = lr_at(self.step, self.total_steps, self.warmup, self.cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.clip_grad
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # FSDP: a sharded (DTensor) norm
            norm = norm.full_tensor()
        if self.defer:  # no host read: the fused optimizer skips a non-finite step on the device
            bad = ~torch.isfinite(norm)
            self.bad_steps += bad
            self.optimizer.grad_scale, self.optimizer.found_inf = None, bad.float()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema:
                self.ema.update(self.model)
            return lr
        if not torch.isfinite(norm):
            if self.scaler:  # an fp16 overflow: the scaler skips the step and lowers its scale, as designed
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.overflow_skipped += 1
            else:
                self._nonfinite(f"gradient norm became {float(norm)}")
            self.optimizer.zero_grad(set_to_none=True)
            return lr
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(self.model)
        return lr

    def _running_host(self) -> dict[str, float | int]:
        """The epoch's running sums as host numbers (with deferred reads they accumulate on the device)."""
        self.running = {k: v.item() if torch.is_tensor(v) else v for k, v in self.running.items()}
        return dict(self.running)

    def _check_deferred(self) -> None:
        """Read the device's count of non-finite steps (at logging and checkpoint steps, and at an epoch's
        end): skipped steps are counted, or the run stops before any checkpoint takes such weights."""
        if not self.defer:
            return
        bad = int(self.dist.sum([int(self.bad_steps)])[0])
        new, self.bad_steps_seen = bad - self.bad_steps_seen, bad
        if new:
            self._nonfinite(f"loss or gradient became non-finite in {new} step(s)", new, f"by step {self.step}")

    def _nonfinite(self, what: str, count: int = 1, at: str | None = None) -> None:
        if self.cfg.train.skip_nonfinite:
            self.nonfinite_skipped += count
            return
        last = self.folder.last_state
        kept = f"the last good checkpoint ({last}) is kept" if last.exists() else "no checkpoint had been written yet"
        raise VitkitError(f"{what} {at or f'at step {self.step + 1}'}; training stopped, {kept} "
                          f"(set train.skip_nonfinite=true to skip such steps)")

    # --- the loop ------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t_start = time.perf_counter()
        self._setup()
        cfg, t = self.cfg, self.cfg.train
        if self.dist.is_main:
            self.folder.path.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                save_config(cfg, self.folder.config)
            log = MetricsLog(self.folder.metrics, resume_step=self.step if self.resume else None)
            if t.tensorboard:
                log.attach_tensorboard(self.folder.tensorboard)
        else:
            log = _NoLog()
        loader_rate = measure_loader(self._train_loader(), 5)
        self._say(f"run {self.folder}: {self.meta['model_name']} ({self.params:,} parameters) on {cfg.data.spec}: "
                  f"{self.data.train_size} train / {len(self.data.val)} val / {len(self.data.test)} test images, "
                  f"{self.data.num_classes} classes; batch {t.batch_size} x accum {cfg.optim.accum_steps}, "
                  f"{self.total_steps} steps; data loader alone: {loader_rate:,.0f} img/s")
        self._say(f"precision: {self.precision} ({self.precision_reason})")
        warning = size_warning(tuple(self.model_cfg.img_size), self.data.image_size)
        if warning:
            self._say(warning)
        if self.dist.enabled:
            self._say(f"{self.dist.world_size} processes ({'FSDP' if t.fsdp else 'DDP'}, "
                      f"{dist_backend()}): global batch {t.batch_size} = {self.dist.world_size} x "
                      f"{self.local_batch} per process; lr {cfg.optim.lr:g} is for the global batch")
        if t.compile:
            self._say("train.compile: the first step waits for torch.compile (30-60 s on a CPU)")
        previous = signal.getsignal(signal.SIGINT)
        in_main = _in_main_thread()
        if in_main:
            signal.signal(signal.SIGINT, self._on_sigint)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True)
        train_time = 0.0
        status = "completed"
        try:
            while self.epoch < t.epochs and not self.stop_requested:
                train_time += self._run_epoch(log, bar)
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
        if self.stop_requested and self.epoch < t.epochs:
            status = "interrupted"
            self.save_last()
            self._say(f"interrupted at step {self.step}; resume with: vitkit train --resume {self.folder}")
        summary = self._finish(log, status, time.perf_counter() - t_start, train_time, loader_rate)
        log.close()
        return summary

    def _train_loader(self, skip: int = 0):
        """This epoch's batches for this process, after the first `skip` (mid-epoch resume)."""
        workers = self.workers
        if isinstance(self.sampler, EpochBatches):
            self.sampler.skip = skip
            return make_loader(self.data.train, self.local_batch, workers, self.sampler, self.pin)
        from itertools import islice

        from torch.utils.data import DataLoader

        loader = DataLoader(self.sampler, batch_size=None, num_workers=workers, pin_memory=self.pin,
                            multiprocessing_context="fork" if workers else None)
        return islice(loader, skip, self.batches_per_epoch)  # a stream may hold more: all processes stop together

    def _run_epoch(self, log: MetricsLog, bar) -> float:
        cfg, t = self.cfg, self.cfg.train
        self.sampler.epoch = self.data.train.epoch = self.epoch
        loader = self._train_loader(skip=self.batch_in_epoch)
        self.model.train()
        accum = cfg.optim.accum_steps
        micro, t_epoch, t_log, wait, imgs_since_log = 0, time.perf_counter(), time.perf_counter(), 0.0, 0
        t_wait = time.perf_counter()
        for batch in loader:
            wait += time.perf_counter() - t_wait
            self.batch_in_epoch += 1
            if batch["skipped"]:
                new = set(batch["skipped"]) - self.skipped
                self.skipped |= new
                warn_skipped(sorted(new))
            last_batch = self.batch_in_epoch == self.batches_per_epoch
            verdict, loss, correct, n, images = self._forward_backward(batch, sync=micro + 1 == accum or last_batch)
            if verdict == "nonfinite":
                self._nonfinite(f"loss became {loss if not math.isfinite(loss) else 'non-finite in another process'}")
                self.optimizer.zero_grad(set_to_none=True)
                micro = 0
                t_wait = time.perf_counter()
                continue
            if verdict == "ok":
                self.running["loss"] += loss * n
                self.running["correct"] += correct
                self.running["seen"] += n
                self.running["images"] = self.running.get("images", 0) + images
                imgs_since_log += images
                micro += 1
            if micro == accum or (last_batch and micro):
                lr = self._optimizer_step()
                self.step += 1
                micro = 0
                logging_step = self.step % t.log_every == 0
                if bar is not None:
                    bar.update(1)
                if bar is not None and (logging_step or not self.defer):
                    rate = bar.format_dict.get("rate") or 0.0  # steps/s, smoothed by tqdm
                    bar.set_postfix({"loss": f"{float(loss):.3f}",
                                     self.objective.metric: f"{float(correct) / max(n, 1):.3f}",
                                     "lr": f"{lr:.2e}",
                                     "img_s": f"{rate * t.batch_size * cfg.optim.accum_steps:.0f}"})
                if logging_step:
                    self._check_deferred()
                    now = time.perf_counter()
                    loss_sum, correct, n, imgs = self.dist.sum([float(loss) * n, float(correct), n, imgs_since_log])
                    loss = loss_sum / max(n, 1)
                    rec = {"kind": "step", "step": self.step, "epoch": self.epoch + 1, "loss": loss,
                           self.objective.metric: correct / max(n, 1), "lr": lr, "img_s": imgs / (now - t_log)}
                    log.write(rec)
                    if bar is None:
                        self._say(f"epoch {self.epoch + 1}/{t.epochs} step {self.step}/{self.total_steps} "
                                  f"loss {loss:.4f} {self.objective.metric} {correct / max(n, 1):.3f} lr {lr:.2e} "
                                  f"{rec['img_s']:.0f} img/s")
                    t_log, imgs_since_log = now, 0
                if self.on_step:
                    self.on_step(self)
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and not last_batch:
                    self.save_last()
                if self._agree_stop() and not last_batch:
                    return time.perf_counter() - t_epoch
            t_wait = time.perf_counter()
        elapsed = time.perf_counter() - t_epoch
        self._end_epoch(log, elapsed, wait)
        return elapsed

    def _agree_stop(self) -> bool:
        """A stop (Ctrl-C, request_stop) seen by any process stops all of them at the same step."""
        if self.dist.enabled:
            self.stop_requested = not self.dist.all_true(not self.stop_requested)
        return self.stop_requested

    def _evaluate(self, ds, model: nn.Module):
        """Each process evaluates its slice of `ds`; the sums are combined, so all see the same numbers."""
        t = self.cfg.train
        sampler = EpochBatches(len(ds), t.eval_batch_size, 0, shuffle=False, rank=self.dist.rank,
                               world_size=self.dist.world_size)
        loader = make_loader(ds, self.local_eval_batch, self.workers, sampler, self.pin)
        g = rng.generator(t.seed, "mask_eval", self.dist.rank)  # the same every epoch, so epochs compare
        ev = self.objective.evaluate(model, loader, self.device, self.amp_dtype, g, lockstep=self.cfg.train.fsdp)
        if not self.dist.enabled:
            return ev
        return self.objective.from_sums(self.dist.sum(ev.sums()), ev.skipped)

    def _end_epoch(self, log: MetricsLog, elapsed: float, wait: float) -> None:
        t = self.cfg.train
        self._check_deferred()
        ev = self._evaluate(self.data.val, self.eval_model())
        running = self._running_host()
        loss_sum, correct, seen, images = self.dist.sum([running["loss"], running["correct"],
                                                         running["seen"], running.get("images", 0)])
        metric = self.objective.metric
        rec = {"kind": "epoch", "step": self.step, "epoch": self.epoch + 1,
               "train_loss": loss_sum / max(seen, 1), f"train_{metric}": correct / max(seen, 1),
               **{f"val_{k}": v for k, v in ev.record().items()},
               "lr": self.optimizer.param_groups[0]["lr"], "img_s": (images or seen) / max(elapsed, 1e-9),
               "data_wait_frac": wait / max(elapsed, 1e-9), "epoch_time_s": elapsed}
        log.write(rec)
        self._say(f"epoch {self.epoch + 1}/{t.epochs}: train loss {rec['train_loss']:.4f} {metric} "
                  f"{rec[f'train_{metric}']:.4f} | val loss {ev.loss:.4f} {metric} {ev.score:.4f} | "
                  f"{rec['img_s']:.0f} img/s, {elapsed:.1f}s")
        self.epoch += 1
        self.batch_in_epoch = 0
        self.running = {"loss": 0.0, "correct": 0, "seen": 0, "images": 0}
        # ties go to the lower val loss
        if (ev.score, -ev.loss) > (self.best_acc, -self.best_loss):
            self.best_acc, self.best_loss, self.best_step = ev.score, ev.loss, self.step
            model = self._published()
            if self.dist.is_main:
                save_weights(self.folder.best_weights, model,
                             model_meta(self.model, step=self.step, epoch=self.epoch, **{f"val_{metric}": ev.score}, **self.meta))
            self.dist.barrier()
        # Only now does the saved state say the epoch ended: a kill between the two writes repeats the epoch's
        # end instead of resuming with a best score whose weights were never written.
        self.save_last()

    def _finish(self, log: MetricsLog, status: str, wall: float, train_time: float, loader_rate: float) -> dict:
        records = log.read()
        if self.dist.is_main:
            plot_curves(records, self.folder.curves, self.objective.metric)
        summary: dict[str, Any] = {
            "status": status, "objective": self.objective.name, "model": self.meta["model_name"],
            "data": self.cfg.data.spec, "params": self.params, "epochs": self.epoch, "steps": self.step,
            f"best_val_{self.objective.metric}": self.best_acc, "best_step": self.best_step,
            "wall_time_s": round(wall, 2), "train_time_s": round(train_time, 2),
            "img_s": _mean([r["img_s"] for r in records if r.get("kind") == "epoch"]),
            "loader_img_s": round(loader_rate, 1), "skipped_files": len(self.skipped),
            "skipped": sorted(self.skipped)[:100], "nonfinite_steps_skipped": self.nonfinite_skipped,
            "host_reads": "deferred to logging steps" if self.defer else "every step",
            "overflow_steps_skipped": self.overflow_skipped,
            "run_dir": str(self.folder), "precision": self.precision, "precision_reason": self.precision_reason,
            "machine": describe(),
        }
        if status == "completed" and self.objective.scores_test:
            ev = self._evaluate(self.data.test, self._best_model())
            summary.update({f"test_{k}": v for k, v in ev.record().items()}, test_count=ev.count)
            tested = f", test {self.objective.metric} {ev.score:.4f} on {ev.count} images"
        else:
            tested = ""
        if status == "completed":
            self._say(f"done in {wall:.1f}s: best val {self.objective.metric} {self.best_acc:.4f} "
                      f"(step {self.best_step}){tested} -> {self.folder}")
        if self.dist.is_main:
            atomic_write_text(self.folder.summary, json.dumps(summary, indent=2))
        return summary

    def _best_model(self) -> nn.Module:
        """The best checkpoint, to score on the test split. Under FSDP it is read by the first process and
        broadcast into the training model's shards: no process holds a whole copy."""
        if not self.cfg.train.fsdp:
            return load_weights(self.folder.best_weights, self.device)[0]
        from .fsdp import load_full_model_state

        state = read_safetensors(self.folder.best_weights)[0] if self.dist.is_main else {}
        load_full_model_state(self.model, state)
        return self.model

    def _on_sigint(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop_requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", file=sys.stderr)

    def _say(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        if self.progress:
            from tqdm import tqdm

            tqdm.write(msg)
        else:
            print(msg, flush=True)


class _NoLog:
    """What processes other than the first log to: nothing."""

    def write(self, rec: dict) -> None:
        pass

    def read(self) -> list[dict]:
        return []

    def close(self) -> None:
        pass


def _mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 1) if xs else 0.0


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(cfg: RunConfig | None = None, resume: str | Path | None = None, progress: bool | None = None,
          on_step: Callable[[Trainer], None] | None = None, epochs: int | None = None) -> dict[str, Any]:
    """Train a model as `cfg` says (defaults: the small ViT on the digits); or continue the run in `resume`.
    Under torchrun every process calls this; they join one process group. Returns the summary that is
    also written to summary.json."""
    if resume is not None:
        run = RunDir(resume)
        if not run.is_resumable():
            raise VitkitError(f"cannot resume {run}: no {run.last_state.relative_to(run.path)} in it")
        cfg = build_config(run.config, [f"train.epochs={epochs}"] if epochs else None)
    cfg = cfg or build_config()
    dist, device = init_distributed(resolve_device(cfg.train.device))
    clean = False
    try:
        if resume is not None:
            if epochs and dist.is_main:
                save_config(cfg, run.config)
            summary = Trainer(cfg, run.path, resume=True, progress=progress, on_step=on_step, dist=dist,
                              device=device).run()
            clean = True
            return summary
        run = RunDir(cfg.train.out) if cfg.train.out else RunDir(agree_on(str(RunDir.new(cfg.model_name))))
        if run.is_resumable():  # (a run killed before that file starts afresh)
            raise VitkitError(f"{run} already holds a run; use --resume {run} or another --out")
        summary = Trainer(cfg, run.path, progress=progress, on_step=on_step, dist=dist, device=device).run()
        clean = True
        return summary
    finally:
        shutdown_distributed(clean)
