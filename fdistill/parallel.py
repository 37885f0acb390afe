"""The parallel layer: everything that depends on how many processes run and how the models are laid out on
them, in one place that every stage calls. The same code runs on one process, on CPU processes (gloo) and on a
GPU node (NCCL), so the CPU tests exercise the path a GPU node takes.

* **Work splitting and gathering** (:meth:`Parallel.map_batches`): a stage forms its batches globally, exactly
  as one process would (so every batch holds the same rows whatever the world size, and its numbers are the
  same), deals them out round-robin, runs its function on this process's share and gathers the results by
  row on every process. Where the model is sharded, every process runs the same number of batches (a
  process short of work runs a copy of its first batch and drops the result), since each forward is a
  collective.
* **Trained models** (:meth:`Parallel.prepare_training`): `ddp` hands model and optimizer to accelerate
  together; `fsdp` shards the model with FSDP2's ``fully_shard`` (one unit per transformer layer, the untied
  output head on its own when large, then the root), builds the optimizer on the sharded parameters and
  checkpoints with ``torch.distributed.checkpoint`` (each process writes its shard; a resume reads them).
* **Frozen models** (:meth:`Parallel.prepare_frozen`): the teacher in its own dtype, on the device or sharded
  across the processes (inference only).
* **Published models** (:meth:`Parallel.save_pretrained`): the full state dict gathered to the main process
  and written once (a sharded model's too).
* **Output heads for the fused losses** (:meth:`Parallel.call_head`): the head's full weight for the length
  of one loss call; through an FSDP unit's registered forward method, so its gradient is reduce-scattered
  like any other.

Precision: trained models load in ``pipeline.precision.params`` (float32 master weights by default, whatever
the checkpoint's dtype), the frozen teacher in ``pipeline.precision.teacher``; the math of the losses runs in
float32 and autocast follows ``pipeline.mixed_precision``.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fdistill.config import PipelineConfig
from fdistill.errors import ConfigError
from fdistill.models.heads import LinearHead, output_head

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: an untied output head of at least this many parameters is its own FSDP unit under head_unit=auto
HEAD_UNIT_MIN_PARAMS = 2**24
#: what a sharded checkpoint holds besides torch.distributed.checkpoint's files: each process's RNG state
RNG_FILE = "random_states_{rank}.pkl"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (an FSDP2 model is its own module)."""
    return getattr(model, "module", model)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, found by the classes transformers itself keeps whole when it splits a model
    across devices (``_no_split_modules``: LlamaDecoderLayer, BartEncoderLayer, T5Block, GPT2Block, ...)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise ConfigError(f"pipeline.distributed: {type(model).__name__} names no transformer block classes "
                          "(_no_split_modules), so fdistill cannot shard it layer by layer; use strategy=ddp")
    return layers


class Parallel:
    """The processes of one run and how models are laid out on them (see the module docstring)."""

    def __init__(self, accelerator, cfg: PipelineConfig) -> None:
        self.accelerator = accelerator
        self.distributed, self.precision = cfg.distributed, cfg.precision
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.attn_implementation = cfg.attn_implementation
        self.chunk_tokens = cfg.chunk_tokens
        on_gpu = self.device.type == "cuda"
        self.teacher_dtype = DTYPES[self.precision.teacher] if self.precision.teacher != "auto" else (
            torch.bfloat16 if on_gpu else torch.float32)
        self.params_dtype = DTYPES[self.precision.params]
        if on_gpu and self.precision.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.shard_training = self.distributed.strategy == "fsdp" and self.world_size > 1
        self.shard_teacher = self.distributed.shard_teacher and self.world_size > 1
        if self.world_size == 1 and (self.distributed.strategy == "fsdp" or self.distributed.shard_teacher):
            log.info("one process: pipeline.distributed (strategy=%s, shard_teacher=%s) has nothing to shard across",
                     self.distributed.strategy, self.distributed.shard_teacher)

    # ------------------------------------------------------------------ processes
    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def broadcast(self, value: Any) -> Any:
        """The main process's `value` on every process."""
        if self.world_size == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order, on every process."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def global_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over the processes of a tensor (a copy; the input is unchanged)."""
        if self.world_size == 1:
            return value.clone()
        import torch.distributed as dist

        total = value.detach().clone()
        dist.all_reduce(total)
        return total

    def check_shared_filesystem(self, directory: Path) -> None:
        """Several nodes must see one cache and one output dir (the main process publishes, every process reads):
        a file the main process writes must be visible to every process."""
        if self.world_size == 1:
            return
        token = directory / f".fdistill-shared-{self.broadcast(os.urandom(8).hex())}"
        if self.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            token.write_text("shared")
        self.barrier()
        visible = self.all_gather(token.is_file())
        self.barrier()
        if self.is_main:
            token.unlink(missing_ok=True)
        missing = [rank for rank, seen in enumerate(visible) if not seen]
        if missing:
            raise ConfigError(f"processes {missing} do not see {directory} as the main process does: with several "
                              "nodes, paths.cache_dir and paths.output_dir must be on a filesystem every node shares "
                              "(NFS, Lustre, a cloud filestore)")

    # ------------------------------------------------------------------ work
    def deal(self, num_batches: int, collective: bool) -> list[int | None]:
        """This process's share of `num_batches` global batches (round-robin: each process's batches spread over
        the length range). With `collective` every process gets the same count; None pads the short ones."""
        mine: list[int | None] = list(range(self.rank, num_batches, self.world_size))
        if collective and self.world_size > 1:
            rounds = -(-num_batches // self.world_size)
            mine += [None] * (rounds - len(mine))
        return mine

    def map_batches(self, batches: Sequence[Sequence[int]], run: Callable[[list[int]], list[Any]],
                    collective: bool = False, progress: str | None = None) -> list[Any]:
        """``run(rows) -> one result per row`` over global `batches` of row indices, split across the processes,
        and the results of every row in row order on every process. `collective`: `run` makes collective calls
        (a sharded model's forward), so every process runs the same number of batches. `progress` labels a bar."""
        from tqdm.auto import tqdm

        results: dict[int, Any] = {}
        share = self.deal(len(batches), collective)
        for index in tqdm(share, desc=progress, disable=progress is None or not self.accelerator.is_local_main_process,
                          dynamic_ncols=True):
            rows = list(batches[index if index is not None else share[0] if share[0] is not None else 0])
            values = run(rows)
            if index is not None:
                results.update(zip(rows, values, strict=True))
        if self.world_size > 1:
            for part in self.all_gather(results):
                results.update(part)
        return [results[row] for row in sorted(results)]

    # ------------------------------------------------------------------ models
    def load(self, path: str | os.PathLike, architecture: str, role: str) -> nn.Module:
        """A checkpoint as a `trained` model (params dtype, float32 master weights by default; gradient
        checkpointing if set), an `evaluated` student (params dtype) or a `frozen` teacher (the teacher's dtype),
        with the configured attention."""
        from fdistill.models import load_teacher

        if role not in ("trained", "evaluated", "frozen"):
            raise ValueError(f"role={role!r}; expected trained, evaluated or frozen")
        dtype = self.teacher_dtype if role == "frozen" else self.params_dtype
        model = load_teacher(path, architecture, dtype=dtype, attn_implementation=self.attn_implementation)
        if role == "trained":
            model.train()
            if self.gradient_checkpointing:  # non-reentrant: works with FSDP2 and frozen inputs
                if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def prepare_frozen(self, model: nn.Module, shard: bool | None = None) -> nn.Module:
        """A model that is only read (the teacher; a student being evaluated): no gradients, eval mode, sharded
        across the processes when `shard` (default: pipeline.distributed.shard_teacher), else on the device."""
        model.requires_grad_(False).eval()
        if self.shard_teacher if shard is None else (shard and self.world_size > 1):
            self._shard(model)
            return model
        return model.to(self.device)

    def prepare_training(self, model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
                         ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The trained model and its optimizer, prepared together: sharded (fsdp) with the optimizer built on the
        shards, or handed to accelerate (ddp: the whole model on every process)."""
        if self.shard_training:
            self._shard(model)
            return model, make_optimizer(model)
        return self.accelerator.prepare(model, make_optimizer(model))

    def _shard(self, model: nn.Module) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        for layer in transformer_layers(model):
            fully_shard(layer, mesh=mesh)
        head = model.get_output_embeddings()
        tied = head.weight is model.get_input_embeddings().weight
        own = self.distributed.head_unit == "own" or (
            self.distributed.head_unit == "auto" and head.weight.numel() >= HEAD_UNIT_MIN_PARAMS)
        if own and not tied and isinstance(head, nn.Linear):
            fully_shard(head, mesh=mesh)
            head.fdistill_head = _head_forward.__get__(head)
            register_fsdp_forward_method(head, "fdistill_head")
        fully_shard(model, mesh=mesh)
        # generate() of an encoder-decoder calls the encoder outside the root's forward: as a forward method of
        # the root it finds the root's parameters (embeddings, head) gathered
        register_fsdp_forward_method(model, "generate")
        # FSDP discovers its units at the first forward; the fused losses' first forward swaps the head out
        # (fdistill.models.heads), so the discovery runs now, on the model as it is
        model._get_fsdp_state()._lazy_init()

    def call_head(self, model: nn.Module, fn: Callable[[LinearHead, torch.Tensor], Any], hidden: torch.Tensor,
                  vocab_size: int | None = None) -> Any:
        """``fn(head, hidden)`` with the model's output head (full weights, its first `vocab_size` rows) for the
        length of the call. A head that is its own FSDP unit is gathered by the unit's registered forward method,
        so its gradient is reduce-scattered like every other; a head in the root unit is gathered already
        (FSDP keeps the root's parameters after forward, and fdistill calls the head after the model)."""
        from torch.distributed.tensor import DTensor

        inner = unwrap(model)
        head_module = inner.get_output_embeddings()
        if hasattr(head_module, "fdistill_head"):
            return head_module.fdistill_head(lambda gathered: fn(output_head(inner, vocab_size), gathered), hidden)
        head = output_head(inner, vocab_size)
        if isinstance(head.weight, DTensor):
            raise RuntimeError("the output head is sharded outside of a forward pass; call the model first "
                               "(its root unit keeps the head's parameters gathered until backward)")
        return fn(head, hidden)

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's state dict on the main process (None elsewhere); collective for a sharded model."""
        if is_sharded(model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True,
                                                                                  cpu_offload=True))
            if not self.is_main:
                return None
            # tied weights (one parameter under several names) come back as copies; alias them again, so that
            # save_pretrained stores the one name transformers reloads, as it does for an unsharded model
            names_of: dict[int, list[str]] = {}
            for name, parameter in unwrap(model).named_parameters(remove_duplicate=False):
                names_of.setdefault(id(parameter), []).append(name)
            for names in names_of.values():
                present = [name for name in names if name in state]
                for alias in present[1:]:
                    state[alias] = state[present[0]]
            return state
        return unwrap(model).state_dict() if self.is_main else None

    def save_pretrained(self, model: nn.Module, tokenizer, out_dir: Path) -> None:
        """``save_pretrained`` of the whole model (gathered once if sharded) and its tokenizer, by the main process."""
        self.barrier()
        state = self.full_state_dict(model)
        if self.is_main:
            unwrap(model).save_pretrained(out_dir, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
        self.barrier()

    def nonfinite_weights(self, model: nn.Module) -> list[str]:
        """Names of weight tensors holding NaN/inf, on any process (each checks its shards; collective)."""
        from torch.distributed.tensor import DTensor

        bad = [name for name, tensor in unwrap(model).state_dict().items()
               if tensor.is_floating_point() and not bool(torch.isfinite(
                   tensor.to_local() if isinstance(tensor, DTensor) else tensor).all())]
        if is_sharded(model):
            bad = sorted({name for part in self.all_gather(bad) for name in part})
        return bad

    # ------------------------------------------------------------------ training steps
    @contextmanager
    def gradient_sync(self, model: nn.Module, sync: bool) -> Iterator[None]:
        """Within the block, backward reduces gradients across processes only when `sync` (gradient accumulation)."""
        if is_sharded(model):
            unwrap(model).set_requires_gradient_sync(sync)
            yield
            return
        with self.accelerator.accumulate(model):
            yield

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        """The global gradient norm (before clipping to `max_norm`; inf: no clipping), the same on every process."""
        if is_sharded(model):
            from torch.distributed.tensor import DTensor

            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        return float(self.accelerator.clip_grad_norm_(model.parameters(), max_norm))

    def save_training_state(self, model: nn.Module, optimizer, directory: Path) -> None:
        """Model, optimizer and this process's RNG state into `directory` (every process writes its part)."""
        if not is_sharded(model):
            self.accelerator.save_state(str(directory))
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory))
        torch.save(_rng_state(), directory / RNG_FILE.format(rank=self.rank))

    def load_training_state(self, model: nn.Module, optimizer, directory: Path) -> None:
        if not is_sharded(model):
            self.accelerator.load_state(str(directory))
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(directory))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        _set_rng_state(torch.load(directory / RNG_FILE.format(rank=self.rank), weights_only=False))


def _head_forward(self: nn.Module, fn: Callable[[Any], Any], hidden: torch.Tensor) -> Any:
    """The forward method an FSDP head unit runs the fused losses through (registered with FSDP, so the unit
    gathers its weight before and registers its gradient reduction after)."""
    return fn(hidden)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
