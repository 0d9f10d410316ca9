"""The training loop of ``vosctl train``, on one process, several local ones, or under torchrun.

    vosctl train --data DAVIS --out runs/x                  # one process (a GPU when found)
    vosctl train --data DAVIS --out runs/x --gpus 0,1       # one process per GPU, NCCL + DDP
    vosctl train --data DAVIS --out runs/x --nproc 2        # two CPU processes, gloo + DDP
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m vosctl train --data DAVIS --out runs/x --gpus all   # several machines

Rank 0 alone reports, validates and writes files: ``checkpoint.pt`` (every ``checkpoint_every``
steps and at the end; ``--resume`` continues from it exactly), ``metrics.jsonl`` and, at the end,
``model.pt``, the compact model file that ``--model`` takes everywhere (``best.pt`` is the same
for the best validation J so far). Each rank seeds its data and anchor sampling with its rank as
offset; the model starts identical on every rank.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine.backbones import backbone_names, create_backbone
from engine.errors import VosError
from engine.factory import save_model_file
from engine.model import EmbeddingModel, create_model
from engine.session import session_config_for
from trainer import distributed as dist
from trainer.cache import FeatureCacheSet
from trainer.checkpoint import checkpoint_settings, load_checkpoint, restore_checkpoint, save_checkpoint
from trainer.codec import through_codec
from trainer.data import DavisTrainingSet, load_sequence, make_loader, split_sequences
from trainer.loss import pixelwise_metric_loss
from trainer.net import TrainingNet, parameter_hash, set_train_mode, set_trainable_backbone, stored_level
from trainer.report import Reporter
from trainer.settings import TrainSettings, settings_to_dict
from trainer.validate import evaluate_sequences, mean_score

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
BEST_NAME = "best.pt"


@dataclass
class TrainResult:
    step: int  # steps done
    finished: bool  # False when stopped early by ``stop_after``
    checkpoint: Path
    model: Path | None  # the final model file (None when stopped early)
    val: dict = field(default_factory=dict)  # per-sequence scores of the last validation
    val_j: float | None = None
    param_hashes: list[str] = field(default_factory=list)  # one per rank; equal when in sync
    seconds: float = 0.0


def lr_schedule(*, warmup: int, total: int, min_ratio: float):
    """Linear warm-up, then cosine from 1 to ``min_ratio`` over ``total`` steps."""

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / max(1, warmup))
        progress = min(1.0, step / max(1, total))
        return ramp * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step) % (2**63)


def resolve_settings(settings: TrainSettings) -> TrainSettings:
    """Take the trajectory settings from the checkpoint when resuming; resolve the sequence lists."""
    if settings.resume is not None:
        saved = checkpoint_settings(load_checkpoint(settings.resume))
        # A data folder given again (say, moved) replaces the saved one; nothing else changes.
        root = settings.data.root or saved.data.root
        settings = replace(saved, data=replace(saved.data, root=root), run=settings.run, resume=settings.resume)
    if settings.model.backbone not in backbone_names():
        raise VosError(f"Unknown backbone '{settings.model.backbone}'; choose one of: {', '.join(backbone_names())}.")
    if settings.model.backbone_weights and settings.model.backbone != "deeplab_resnet101":
        raise VosError("--backbone-weights is for deeplab_resnet101; the other backbones bring their own weights.")
    if settings.data.cache_features and settings.model.train_backbone:
        # Before any process starts: the trained layers must leave a cached level frozen.
        levels = create_backbone(settings.model.backbone, pretrained=False).levels
        stored_level(levels, settings.model.train_backbone_from)
    if settings.data.root is None:
        raise VosError("Training needs --data, the folder of the training videos (DAVIS layout).")
    train, val = split_sequences(settings.data.root, settings.data.sequences, settings.data.val_sequences)
    return replace(settings, data=replace(settings.data, sequences=tuple(train), val_sequences=tuple(val)))


def run_training(*, settings: TrainSettings) -> TrainResult:
    """Train as the settings say, spawning local processes or joining torchrun's group as needed."""
    settings = resolve_settings(settings)
    run = settings.run
    launch = dist.plan_launch(gpus=run.gpus, nproc=run.nproc, device=run.device)
    if dist.launched_by_torchrun():
        dist.init_process_group(backend=launch.backend, rank=None, world=None, init_method="env://")
        try:
            local = int(os.environ["LOCAL_RANK"])
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            return _train(settings, launch.device_for(local), local_world)
        finally:
            dist.destroy_process_group()
    if launch.processes > 1:
        return dist.spawn(_spawned, processes=launch.processes, args=(settings, launch))
    return _train(settings, launch.device_for(0), 1)


def _spawned(local_rank: int, world: int, init_method: str, settings: TrainSettings, launch) -> TrainResult:
    dist.init_process_group(backend=launch.backend, rank=local_rank, world=world, init_method=init_method)
    try:
        return _train(settings, launch.device_for(local_rank), world)
    finally:
        dist.destroy_process_group()


def _build(settings: TrainSettings, device: torch.device):
    """Model, DDP-wrapped net, optimiser, scheduler, scaler and the step to start from."""
    torch.manual_seed(settings.seed)  # the same initial weights on every rank
    model = create_model(settings.model.model_config(), pretrained=True)
    set_trainable_backbone(model)
    model.to(device)
    net: nn.Module = TrainingNet(model)
    if dist.world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        # Buffers are BatchNorm statistics of the frozen-BN backbone: nothing to broadcast.
        net = DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)
    o = settings.optim
    groups = [{"params": list(model.head.parameters()), "lr": o.lr}]
    if settings.model.train_backbone:
        trainable = [p for p in model.backbone.parameters() if p.requires_grad]
        groups.append({"params": trainable, "lr": o.lr * o.backbone_lr_scale})
    optimizer = torch.optim.AdamW(groups, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(warmup=o.warmup, total=settings.run.steps, min_ratio=o.min_lr_ratio)
    )
    amp = None
    if device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    start = 0
    if settings.resume is not None:
        payload = load_checkpoint(settings.resume)
        start = restore_checkpoint(payload, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    return model, net, optimizer, scheduler, scaler, amp, start


def _validate(model: EmbeddingModel, settings: TrainSettings, device: torch.device) -> dict:
    # The settings the model file will carry (``--infer``), at the validation size. The network runs
    # in torch: the weights change between validations, and OpenVINO or ONNX Runtime would export
    # (2 s) and cache a graph file for every one of them.
    config = session_config_for(model, max_size=settings.run.val_max_size, runtime="torch")
    names = list(settings.data.val_sequences)
    return evaluate_sequences(model, settings.data.root, names, config=config, device=device)


def _dataset(settings: TrainSettings, model: EmbeddingModel, device: torch.device, rank: int):
    """The sample stream of this rank, its loader worker count and the seconds spent caching."""
    data, run = settings.data, settings.run
    sequences = [load_sequence(data.root, name) for name in data.sequences]
    if data.codec_crf is not None:
        # Kept with the cached features, or in the run's folder, so a later run or --resume reuses them.
        folder = Path(data.cache_dir or run.out) / f"codec-crf{data.codec_crf}"
        sequences = [through_codec(seq, data.codec_crf, folder / seq.name) for seq in sequences]
    if not data.cache_features:
        dataset = DavisTrainingSet(
            sequences,
            crop=data.crop,
            frames_per_sample=data.frames_per_sample,
            scale=data.scale,
            jitter=data.jitter,
            seed=settings.seed,
            rank=rank,
        )
        return dataset, run.workers, 0.0
    began = time.perf_counter()
    if settings.model.train_backbone:
        # The cache holds what the frozen layers give, so it never takes trained weights (a resumed
        # run's), which would also reach the store that frozen-backbone runs read.
        model = create_model(settings.model.model_config(), pretrained=True).to(device).eval()
    dataset = FeatureCacheSet(
        sequences,
        model,
        frames_per_sample=data.frames_per_sample,
        max_size=data.cache_max_size or session_config_for(model).max_size,
        every=data.cache_every,
        crop=data.cache_crop,
        flip=data.cache_flip,
        paste=data.cache_paste,
        paste_objects=data.cache_paste_objects,
        pseudo=data.cache_pseudo,
        pseudo_views=data.cache_pseudo_views,
        store=data.cache_dir,
        seed=settings.seed,
        rank=rank,
        device=device,
    )
    # Workers would each copy the cache; reading it is cheap enough in this process.
    return dataset, 0, time.perf_counter() - began


def _train(settings: TrainSettings, device: torch.device, local_world: int) -> TrainResult:
    run, rank = settings.run, dist.rank()
    began = time.perf_counter()
    torch.set_num_threads(run.threads or max(1, (os.cpu_count() or 1) // max(1, local_world)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model, net, optimizer, scheduler, scaler, amp, start = _build(settings, device)
    if start >= run.steps:
        raise VosError(f"The checkpoint is already at step {start}; give a larger --steps to continue.")
    torch.manual_seed(settings.seed + rank)  # each rank its own stream from here on
    stop = min(run.steps, run.stop_after) if run.stop_after else run.steps
    data = settings.data
    out = Path(run.out)
    dataset, workers, cache_seconds = _dataset(settings, model, device, rank)
    loader = make_loader(
        dataset,
        batch_size=settings.optim.batch_size,
        first_step=start,
        steps=stop,
        workers=workers,
        pin=device.type == "cuda",
    )
    checkpoint_path = out / CHECKPOINT_NAME
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
    reporter = Reporter(
        out=out, first=start, total=run.steps, log_every=run.log_every, progress=run.progress, enabled=dist.is_main()
    )

    def checkpoint(step: int) -> None:
        if dist.is_main():
            save_checkpoint(
                checkpoint_path,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                step=step,
                settings=settings,
            )

    best = {"J": -1.0}

    def validate(step: int) -> dict:
        results = {}
        if dist.is_main() and data.val_sequences:
            results = _validate(model, settings, device)
            score = mean_score(results)
            reporter.record({"step": step, "val_J": score, "val": results})
            reporter.note(f"step {step}: validation J {score:.4f}")
            if score > best["J"]:
                # The model file of the best validation so far, next to the final one.
                best.update(J=score, step=step)
                save_model_file(model, out / BEST_NAME)
        set_train_mode(model)
        dist.barrier()
        return results

    val: dict = {}
    done = start
    with reporter:
        reporter.record(
            {
                "event": "start",
                "step": start,
                "world_size": dist.world_size(),
                "device": str(device),
                "cache_s": round(cache_seconds, 1),
                "settings": settings_to_dict(settings),
            }
        )
        set_train_mode(model)
        waited = 0.0
        tick = time.perf_counter()
        for step, batch in enumerate(loader, start=start):
            waited += time.perf_counter() - tick
            t = batch["t"].to(device).flatten()
            b, f = batch["t"].shape
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                if "features" in batch:
                    emb = net(None, t, [x.to(device, non_blocking=True).flatten(0, 1) for x in batch["features"]])
                else:
                    emb = net(batch["images"].to(device, non_blocking=True).float().flatten(0, 1), t)
            emb = emb.float().unflatten(0, (b, f))
            generator = torch.Generator().manual_seed(_step_seed(settings.seed, rank, step))
            loss = pixelwise_metric_loss(
                emb,
                batch["labels"],
                anchors_per_label=settings.loss.anchors_per_label,
                margin=settings.loss.margin,
                generator=generator,
                kind=settings.loss.kind,
                k=settings.loss.vote_k,
                temperature=settings.loss.vote_temperature,
            )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss.loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.loss.backward()
                optimizer.step()
            scheduler.step()
            done = step + 1
            if done % reporter.log_every == 0 or done == stop:
                mean_loss = sum(dist.all_gather_objects(loss.loss.detach().item())) / dist.world_size()
                extra = {"active": loss.active, "anchors": loss.anchors, "data_wait_s": round(waited, 3)}
                if device.type == "cuda":  # the peak so far, for the README's GPU memory figures
                    extra["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                reporter.step(done, loss=mean_loss, lr=scheduler.get_last_lr()[0], extra=extra)
                waited = 0.0
            if run.val_every and done % run.val_every == 0 and done < run.steps:
                val = validate(done)
            if run.checkpoint_every and done % run.checkpoint_every == 0 and done < stop:
                checkpoint(done)
            tick = time.perf_counter()
        checkpoint(done)
        finished = done >= run.steps
        model_path = None
        if finished:
            if dist.is_main():
                model_path = out / MODEL_NAME
                save_model_file(model, model_path)
            val = validate(done)
        hashes = dist.all_gather_objects(parameter_hash(model))
        reporter.record({"event": "end", "step": done, "finished": finished, "param_hashes": hashes})
    if len(set(hashes)) > 1:
        raise VosError(f"The training processes ended with different weights ({len(set(hashes))} versions).")
    return TrainResult(
        step=done,
        finished=finished,
        checkpoint=checkpoint_path,
        model=model_path,
        val=val,
        val_j=mean_score(val) if val else None,
        param_hashes=hashes,
        seconds=time.perf_counter() - began,
    )
