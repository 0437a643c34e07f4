"""The Tiny Recursive Model: one small network f, reused, with deep supervision and ACT halting.

Two latents ride along in a carry: the answer y (`z_H`) and the reasoning state z (`z_L`), both (B, L, D),
with L = puzzle_prefix + S (the prefix positions get a zero input embedding). One supervision step runs
T = H_cycles cycles; each cycle updates z n = L_cycles times and then y once:

    for n:  z_L = f(z_L, z_H + x)
            z_H = f(z_H, z_L)

f is a ReasoningNet: Block_k(...Block_1(hidden + injection)), each Block a post-norm mixer (Attention or
SequenceMLP from blocks.py, or titans.py's MAGMixer) followed by a SwiGLU.

The first T-1 cycles run without gradient, the last with. The carry is detached and survives up to N_sup
(halt_max_steps) optimizer steps ("deep supervision"); a slot that halts is reset to the fixed initial latents
and takes a fresh sample at the next step. A halting head q_head reads position 0 of y and is trained with
BCE against "the whole answer is correct now".

"Cognate" form: with `step_loss_weights` = [w_0, ..., w_T], every cycle runs with gradient and the loss is
sum_t w_t * CE(answer after cycle t), where t = 0 is the answer read from the carried y before any cycle.
With `detach_cycles` the latents are detached between cycles, so each answer's loss trains its own cycle only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from engine.config import ModelConfig
from engine.model.blocks import Attention, SequenceMLP, SwiGLU, rms_norm
from engine.model.titans import MAGMixer, MemoryState, NeuralMemory

PAD = 0  # label id that is never scored


def trunc_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    """Normal truncated at 2 sigma, rescaled so the kept values really have standard deviation `std`
    (torch's trunc_normal_ alone would leave them at 0.88 std)."""
    sigma = std / 0.87962566103423978  # std of a unit normal truncated to [-2, 2]
    return nn.init.trunc_normal_(t, mean=0.0, std=sigma, a=-2 * sigma, b=2 * sigma)


def halt_logit(threshold: float) -> float:
    """The q_halt logit above which sigmoid(q_halt) > threshold (0.5 gives exactly 0.0)."""
    if threshold <= 0.0:
        return -math.inf
    if threshold >= 1.0:
        return math.inf
    return math.log(threshold / (1.0 - threshold))


class Block(nn.Module):
    """Post-norm block: h = rms_norm(h + mixer(h)); h = rms_norm(h + mlp(h)).

    With `memory = "titans-mag"` the mixer is a MAGMixer, whose neural memory state goes in and comes out:
    forward(h, memory) -> (h, memory); without one, memory passes through untouched (None).
    """

    def __init__(self, cfg: ModelConfig, seq_len: int):
        super().__init__()
        self.eps = cfg.norm_eps
        self.has_memory = cfg.memory == "titans-mag"
        if self.has_memory:
            self.mixer = MAGMixer.from_config(cfg, seq_len)
        elif cfg.mixer == "attention":
            self.mixer = Attention(cfg.d_model, cfg.n_heads, seq_len, cfg.rope_theta, window=cfg.window)
        else:
            self.mixer = SequenceMLP(seq_len, cfg.expansion)
        self.mlp = SwiGLU(cfg.d_model, cfg.expansion)

    def forward(self, h: torch.Tensor, memory=None):  # (B, L, D)
        if self.has_memory:
            mixed, memory = self.mixer(h, memory)
        else:
            mixed = self.mixer(h)
        h = rms_norm(h + mixed, self.eps)
        return rms_norm(h + self.mlp(h), self.eps), memory


class ReasoningNet(nn.Module):
    """The one shared network f of TRM: f(hidden, injection) = blocks(hidden + injection).

    forward(hidden, injection, memory) -> (h, memory); memory is a MemoryState joined over the blocks (or None).
    With `checkpointing`, a block run with gradient keeps only its inputs and recomputes the rest in the backward.
    """

    def __init__(self, cfg: ModelConfig, seq_len: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, seq_len) for _ in range(cfg.n_layers))
        self.checkpointing = cfg.checkpointing

    def run_block(self, block: Block, h: torch.Tensor, memory):
        if self.checkpointing and torch.is_grad_enabled():
            # non-reentrant: works under autocast and torch.compile, and with the memory state's dict in and out
            return checkpoint(block, h, memory, use_reentrant=False)
        return block(h, memory)

    def forward(self, hidden: torch.Tensor, injection: torch.Tensor, memory=None):  # (B, L, D) each
        h = hidden + injection
        if memory is None:
            for block in self.blocks:
                h, _ = self.run_block(block, h, None)
            return h, None
        states = memory.split(len(self.blocks))
        for j, block in enumerate(self.blocks):
            h, states[j] = self.run_block(block, h, states[j])
        return h, type(memory).join(states)


@dataclass
class Carry:
    """Everything recurrent that survives a supervision step, per batch slot."""

    z_H: torch.Tensor  # (B, L, D) the answer latent y
    z_L: torch.Tensor  # (B, L, D) the reasoning latent z
    steps: torch.Tensor  # (B,) int64 supervision steps taken on the slot's current sample
    halted: torch.Tensor  # (B,) bool: the slot takes a fresh sample at the next step
    inputs: torch.Tensor  # (B, S) long, the slot's current sample
    labels: torch.Tensor  # (B, S) long
    memory: MemoryState | None = None  # neural-memory state (fast weights, momentum), when the model has one

    TENSORS = ("z_H", "z_L", "steps", "halted", "inputs", "labels")  # every per-slot field but the memory

    def map(self, fn) -> Carry:
        """The same carry with `fn` applied to every tensor, the memory's included."""
        # type(...) keeps a dict subclass (a memory's own state class) intact
        memory = None if self.memory is None else type(self.memory)({k: fn(v) for k, v in self.memory.items()})
        return Carry(**{name: fn(getattr(self, name)) for name in self.TENSORS}, memory=memory)

    def detach(self) -> Carry:
        return self.map(torch.Tensor.detach)

    def slots(self, sl: slice) -> Carry:
        """The carry of a contiguous range of slots."""
        return self.map(lambda t: t[sl])

    def follow_up(self, mask: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> Carry:
        """Slots in `mask` (B,) take a follow-up turn's data and keep their latents and memory: their steps restart
        and they are no longer halted, so the next step does not reset them to the initial latents."""
        return dataclasses.replace(self, steps=torch.where(mask, 0, self.steps), halted=self.halted & ~mask,
                                   inputs=torch.where(mask[:, None], inputs, self.inputs),
                                   labels=torch.where(mask[:, None], labels, self.labels))

    @classmethod
    def cat(cls, parts: list[Carry]) -> Carry:
        """Slot ranges joined back into one carry, in order."""
        first = parts[0]
        memory = None if first.memory is None else type(first.memory)(
            {k: torch.cat([p.memory[k] for p in parts]) for k in first.memory})
        return cls(**{name: torch.cat([getattr(p, name) for p in parts]) for name in cls.TENSORS}, memory=memory)

    def to_state(self) -> dict[str, torch.Tensor]:
        """Flat dict of contiguous tensors (for safetensors); memory entries are keyed `memory.<name>`."""
        state = {name: getattr(self, name).detach().contiguous() for name in self.TENSORS}
        for k, v in (self.memory or {}).items():
            state[f"memory.{k}"] = v.detach().contiguous()
        return state

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Carry:
        memory = MemoryState({k.removeprefix("memory."): v for k, v in state.items() if k.startswith("memory.")})
        return cls(z_H=state["z_H"], z_L=state["z_L"], steps=state["steps"].long(), halted=state["halted"].bool(),
                   inputs=state["inputs"].long(), labels=state["labels"].long(), memory=memory or None)


@dataclass
class StepOutput:
    logits: torch.Tensor  # (B, S, V) answer after the last cycle
    q_halt_logits: torch.Tensor  # (B,) float32
    loss: torch.Tensor  # scalar: TinyRecursiveModel.loss
    metrics: dict[str, float]
    all_logits: list[torch.Tensor] | None = None  # Cognate form: answers y0..yT, each (B, S, V)


class TinyRecursiveModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.seq_len = seq_len  # S: answer positions
        self.prefix = cfg.puzzle_prefix
        self.length = cfg.puzzle_prefix + seq_len  # L: positions the network sees
        D = cfg.d_model
        self.embed_scale = math.sqrt(D)
        self.embed = nn.Embedding(vocab_size, D)
        self.net = ReasoningNet(cfg, self.length)  # the one shared network f
        self.lm_head = nn.Linear(D, vocab_size, bias=False)
        self.q_head = nn.Linear(D, 2, bias=True)  # [halt, continue]; only the halt logit is trained (TRM)
        # fixed random starting points of the latents: buffers, so no optimizer ever moves them
        self.register_buffer("H_init", torch.empty(D))
        self.register_buffer("L_init", torch.empty(D))
        self.infer_carry: Carry | None = None  # kept across infer() calls until reset_carry()
        self.reset_parameters()

    @property
    def has_memory(self) -> bool:
        return self.cfg.memory != "none"

    @property
    def cognate(self) -> bool:
        return len(self.cfg.step_loss_weights) > 0

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # LeCun-normal (std 1/sqrt(fan_in)), truncated, as in the TRM reference
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, 1.0 / math.sqrt(m.in_features))
                if m.bias is not None:
                    m.bias.zero_()
        trunc_normal_(self.embed.weight, 1.0 / self.embed_scale)  # unit scale after the sqrt(D) factor
        self.q_head.weight.zero_()
        self.q_head.bias.fill_(-5.0)  # start far from halting, so early steps use the full budget
        trunc_normal_(self.H_init, 1.0)
        trunc_normal_(self.L_init, 1.0)
        for m in self.modules():
            # the sequence-MLP mixer starts silent: at LeCun scale it blows up the gradient through the
            # recursion (docs/decisions.md, "silent sequence mixer")
            if isinstance(m, SequenceMLP):
                m.down.weight.zero_()
        for m in self.modules():  # the memory's gate biases and initial weights have their own init
            if isinstance(m, NeuralMemory):
                m.reset_parameters()

    # ---- pieces of one supervision step, in the order they run ----

    def initial_carry(self, batch_size: int, device: torch.device | str | None = None) -> Carry:
        """A carry whose slots are all halted, so the first forward loads data into every slot."""
        device = self.H_init.device if device is None else torch.device(device)
        z_H = self.H_init.to(device).expand(batch_size, self.length, -1).clone()
        z_L = self.L_init.to(device).expand(batch_size, self.length, -1).clone()
        zeros = torch.zeros(batch_size, self.seq_len, dtype=torch.long, device=device)
        return Carry(z_H=z_H, z_L=z_L,
                     steps=torch.zeros(batch_size, dtype=torch.long, device=device),
                     halted=torch.ones(batch_size, dtype=torch.bool, device=device),
                     inputs=zeros, labels=zeros.clone(), memory=self.initial_memory(batch_size, device))

    def initial_memory(self, batch_size: int, device: torch.device | str | None = None) -> MemoryState | None:
        """An empty neural memory for every block (None without one)."""
        if not self.has_memory:
            return None
        device = self.H_init.device if device is None else torch.device(device)
        return MemoryState.join([b.mixer.init_state(batch_size, device) for b in self.net.blocks])

    def reset_halted(self, carry: Carry, new_inputs: torch.Tensor, new_labels: torch.Tensor) -> Carry:
        """Halted slots take the new sample, the initial latents and steps = 0; the others keep their carry."""
        h = carry.halted
        return Carry(
            z_H=torch.where(h[:, None, None], self.H_init.to(carry.z_H.dtype), carry.z_H),
            z_L=torch.where(h[:, None, None], self.L_init.to(carry.z_L.dtype), carry.z_L),
            steps=torch.where(h, 0, carry.steps),
            halted=h,
            inputs=torch.where(h[:, None], new_inputs, carry.inputs),
            labels=torch.where(h[:, None], new_labels, carry.labels),
            memory=None if carry.memory is None else carry.memory.reset(h),  # a fresh sample, an empty memory
        )

    def input_embedding(self, inputs: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, L, D)
        x = self.embed(inputs) * self.embed_scale
        return F.pad(x, (0, 0, self.prefix, 0))  # zero embedding for the prefix positions

    def latent_recursion(self, z_H, z_L, x, memory=None):
        """One cycle: n updates of the reasoning latent, then one of the answer. The neural memory (if any)
        reads and writes on every pass through f, in order."""
        for _ in range(self.cfg.L_cycles):
            z_L, memory = self.net(z_L, z_H + x, memory)
        z_H, memory = self.net(z_H, z_L, memory)
        return z_H, z_L, memory

    def deep_recursion(self, z_H, z_L, x, record: list | None = None, memory=None, all_cycles: bool = False):
        """T cycles. Returns (z_H, z_L, answers, memory): answers = [y0, ..., yT] in the Cognate form (or with
        `all_cycles`: every cycle with gradient, for an objective that compares them), else [yT].
        `record`, if given, receives (z_H, z_L, memory) after every cycle."""
        T = self.cfg.H_cycles
        if self.cognate or all_cycles:  # every cycle is scored, so every cycle carries gradient
            answers = [z_H]
            for t in range(T):
                if t and self.cfg.detach_cycles:  # the design's "detach between steps"
                    z_H, z_L = z_H.detach(), z_L.detach()
                    memory = None if memory is None else memory.detach()
                z_H, z_L, memory = self.latent_recursion(z_H, z_L, x, memory)
                answers.append(z_H)
                if record is not None:
                    record.append((z_H, z_L, memory))
            return z_H, z_L, answers, memory
        with torch.no_grad():  # improve the latents for free; only the last cycle is backpropagated
            for _ in range(T - 1):
                z_H, z_L, memory = self.latent_recursion(z_H, z_L, x, memory)
                if record is not None:
                    record.append((z_H, z_L, memory))
        z_H, z_L, memory = self.latent_recursion(z_H, z_L, x, memory)
        if record is not None:
            record.append((z_H, z_L, memory))
        return z_H, z_L, [z_H], memory

    def readout(self, z_H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Answer logits (B, S, V) from the answer positions, halting logit (B,) from position 0."""
        logits = self.lm_head(z_H[:, self.prefix:]).float()
        q_halt = self.q_head(z_H[:, 0]).float()[:, 0]
        return logits, q_halt

    def should_halt(self, steps: torch.Tensor, q_halt: torch.Tensor, generator: torch.Generator | None,
                    slots: tuple[int, int] | None = None) -> torch.Tensor:
        """(B,) bool. Training: at N_sup steps or when sigmoid(q_halt) > halt_threshold, but with probability
        halt_exploration a slot must first reach a random minimum in [2, N_sup]. Eval: exactly at N_sup steps.
        `slots` = (first, total): these are slots first.. of a batch of `total`; the whole batch's numbers are
        drawn and these slots' taken, so a slot's draws never depend on how the batch is split."""
        N = self.cfg.halt_max_steps
        halted = steps >= N
        if not self.training or N <= 1:
            return halted
        B = steps.shape[0]
        first, total = slots if slots is not None else (0, B)
        gen_device = generator.device if generator is not None else steps.device
        explore = torch.rand(total, generator=generator, device=gen_device)[first:first + B] < self.cfg.halt_exploration
        min_steps = torch.randint(2, N + 1, (total,), generator=generator, device=gen_device)[first:first + B]
        min_steps = torch.where(explore, min_steps, 0).to(steps.device)
        return (halted | (q_halt > halt_logit(self.cfg.halt_threshold))) & (steps >= min_steps)

    # ---- one supervision step ----

    def forward(self, carry: Carry, new_inputs: torch.Tensor, new_labels: torch.Tensor,
                generator: torch.Generator | None = None, norm: tuple[torch.Tensor, int] | None = None,
                slots: tuple[int, int] | None = None, objectives=None) -> tuple[Carry, StepOutput]:
        """One supervision step. `norm` = (scored cells, slots) of the whole batch when this call sees one slot
        chunk of it: the loss and the figures are then the chunk's shares, and the chunks' sum is the batch's.
        `slots` = (first slot, batch size) of that chunk, for halting's random draws (should_halt).
        `objectives` (an engine.objectives.Objectives): the wake loss's mix; its terms join the loss and the figures."""
        carry = self.reset_halted(carry, new_inputs, new_labels)
        x = self.input_embedding(carry.inputs)  # (B, L, D)
        history = [] if objectives is not None else None
        with objectives.watch(self) if objectives is not None else contextlib.nullcontext() as calls:
            z_H, z_L, answers, memory = self.deep_recursion(carry.z_H, carry.z_L, x, record=history,
                                                            memory=carry.memory,
                                                            all_cycles=objectives is not None and objectives.all_cycles)
        logits, q_halt = self.readout(z_H)  # (B, S, V), (B,)
        labels = carry.labels

        # loss: cross-entropy over scored positions (+ the Cognate history) and the halting BCE
        mask = labels != PAD  # (B, S)
        n_cells, n_slots = norm if norm is not None else (mask.sum().clamp_min(1), labels.shape[0])
        all_logits = [logits if y is z_H else self.readout(y)[0] for y in answers] if self.cognate else None
        terms = {} if objectives is None else objectives.terms(self, carry, x, answers, history, calls, n_cells,
                                                                 n_slots, generator, slots)
        with torch.no_grad():
            correct = (logits.argmax(-1) == labels) & mask  # (B, S)
            seq_correct = correct.sum(-1) == mask.sum(-1)  # (B,) whole answer right
        loss, lm_loss, halt_loss = self.loss(logits, q_halt, labels, seq_correct, n_cells, n_slots, all_logits,
                                             terms, objectives)

        with torch.no_grad():
            steps = carry.steps + 1
            halted = self.should_halt(steps, q_halt, generator, slots)
            n_halted = halted.sum()
            figures = torch.stack([
                loss.detach(), lm_loss.detach(), halt_loss.detach(),
                correct.sum() / n_cells, seq_correct.sum() / n_slots,
                n_halted.float(), (seq_correct & halted).sum().float(),
                (steps * halted).sum().float(), steps.sum() / n_slots,
                *(t.detach().float() for t in terms.values()),
            ]).tolist()  # one device sync for all figures
        (loss_v, lm_v, halt_v, cell_acc, exact_acc, n_halt, n_halt_exact, halt_steps, mean_steps) = figures[:9]
        metrics = {
            "loss": loss_v, "lm_loss": lm_v, "halt_loss": halt_v,
            "cell_acc": cell_acc, "exact_acc": exact_acc,
            "n_halted": n_halt, "n_halted_exact": n_halt_exact,
            "halted_exact_acc": n_halt_exact / n_halt if n_halt else float("nan"),  # nan: none halted
            "halted_steps": halt_steps / n_halt if n_halt else float("nan"),  # steps used by halting slots
            "mean_steps": mean_steps,  # steps taken so far, mean over all slots
            **{f"obj_{name}": v for name, v in zip(terms, figures[9:])},  # each objective's term, unweighted
        }
        new_carry = Carry(z_H=z_H, z_L=z_L, steps=steps, halted=halted,
                          inputs=carry.inputs, labels=labels, memory=memory).detach()
        return new_carry, StepOutput(logits=logits, q_halt_logits=q_halt, loss=loss, metrics=metrics,
                                     all_logits=all_logits)

    def loss(self, logits: torch.Tensor, q_halt: torch.Tensor, labels: torch.Tensor, seq_correct: torch.Tensor,
             n_cells: torch.Tensor, n_slots: int, all_logits: list[torch.Tensor] | None = None,
             terms: dict[str, torch.Tensor] | None = None, objectives=None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training loss, written once: cross-entropy summed over scored cells / n_cells (weighted over the
        answers y0..yT in the Cognate form) + 0.5 x halting BCE summed over slots / n_slots; with `objectives`,
        the cross-entropy is weighted by its task weight and each of `terms` joins at its weight.
        Returns (loss, lm_loss, halt_loss)."""
        if all_logits is not None:
            lm_loss = sum(w * self._lm_loss(lg, labels, n_cells) for w, lg in zip(self.cfg.step_loss_weights, all_logits))
        else:
            lm_loss = self._lm_loss(logits, labels, n_cells)
        halt_loss = F.binary_cross_entropy_with_logits(q_halt, seq_correct.float(), reduction="sum") / n_slots
        if objectives is None:
            return lm_loss + 0.5 * halt_loss, lm_loss, halt_loss
        mixed = sum((objectives.weights[k] * t for k, t in (terms or {}).items()), objectives.task * lm_loss)
        return mixed + 0.5 * halt_loss, lm_loss, halt_loss

    @staticmethod
    def _lm_loss(logits: torch.Tensor, labels: torch.Tensor, n_cells: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=PAD, reduction="sum")
        return ce / n_cells

    # ---- evaluation and stateful inference ----

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, n_steps: int | None = None,
                memory: MemoryState | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """From a fresh carry, run n_steps (default N_sup) supervision steps with eval semantics (every slot
        takes all of them). The neural memory starts empty unless `memory` is given.
        Returns (preds (B, S), q_halt (B,))."""
        logits, q_halt = self.predict_logits(inputs, n_steps, memory)
        return logits.argmax(-1), q_halt

    @torch.no_grad()
    def predict_logits(self, inputs: torch.Tensor, n_steps: int | None = None,
                       memory: MemoryState | None = None,
                       memory_free: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """predict() before the argmax: (logits (B, S, V), q_halt (B,)). `memory_free`: carry no memory state,
        so every pass through f starts from an empty memory (what the slow weights know on their own)."""
        n_steps = self.cfg.halt_max_steps if n_steps is None else n_steps
        memory = None if memory_free else self.initial_memory(inputs.shape[0], inputs.device) \
            if memory is None else memory
        logits, q_halt, _ = self.recur(inputs, None, n_steps, memory=memory)
        return logits, q_halt

    @torch.no_grad()
    def recur(self, inputs: torch.Tensor, latents: tuple[torch.Tensor, torch.Tensor] | None = None,
              n_steps: int | None = None, halt_early: bool = False, memory: MemoryState | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, int]]:
        """Up to n_steps (default N_sup) supervision steps from `latents` (z_H, z_L), or the initial latents, with
        eval semantics. `halt_early`: stop after the first step whose q_halt passes halt_threshold, as training
        lets a slot halt (the whole batch must pass). Returns (logits (B, S, V), q_halt (B,), (z_H, z_L, steps))."""
        n_steps = self.cfg.halt_max_steps if n_steps is None else n_steps
        B = inputs.shape[0]
        if latents is None:
            latents = (self.H_init.expand(B, self.length, -1), self.L_init.expand(B, self.length, -1))
        z_H, z_L = latents
        x = self.input_embedding(inputs)
        done, bar = 0, halt_logit(self.cfg.halt_threshold)
        for done in range(1, n_steps + 1):
            z_H, z_L, _, memory = self.deep_recursion(z_H, z_L, x, memory=memory)
            if halt_early and done < n_steps and bool((self.q_head(z_H[:, 0])[:, 0] > bar).all()):
                break
        logits, q_halt = self.readout(z_H)
        return logits, q_halt, (z_H, z_L, done)

    @torch.no_grad()
    def infer(self, inputs: torch.Tensor) -> torch.Tensor:
        """Stateful inference, one supervision step per call; returns preds (B, S).

        The model keeps a carry between calls. A slot whose inputs differ from the carried ones (or every slot,
        on the first call or when the batch size changes) starts fresh from the initial latents; a slot with the
        same inputs takes one more step, until it has taken N_sup steps; after that its answer is final and it
        stays as it is. `reset_carry()` forgets everything."""
        prev = self.infer_carry
        if prev is None or prev.inputs.shape != inputs.shape or prev.inputs.device != inputs.device:
            prev = self.initial_carry(inputs.shape[0], inputs.device)
            restart = torch.ones(inputs.shape[0], dtype=torch.bool, device=inputs.device)
        else:
            restart = (prev.inputs != inputs).any(-1)
        carry = self.reset_halted(dataclasses.replace(prev, halted=restart), inputs, torch.zeros_like(inputs))
        z_H, z_L, _, memory = self.deep_recursion(carry.z_H, carry.z_L, self.input_embedding(inputs),
                                                  memory=carry.memory)
        active = carry.steps < self.cfg.halt_max_steps  # (B,) slots still allowed a step
        steps = carry.steps + active.long()
        if memory is not None:  # a finished slot keeps its memory as it was, like its latents
            memory = MemoryState({k: torch.where(active.view(-1, 1, 1, 1), v, carry.memory[k])
                                  for k, v in memory.items()})
        self.infer_carry = Carry(
            z_H=torch.where(active[:, None, None], z_H, carry.z_H),
            z_L=torch.where(active[:, None, None], z_L, carry.z_L),
            steps=steps, halted=steps >= self.cfg.halt_max_steps,
            inputs=inputs.clone(), labels=carry.labels, memory=memory,
        )
        logits, _ = self.readout(self.infer_carry.z_H)
        return logits.argmax(-1)

    def reset_carry(self) -> None:
        self.infer_carry = None

    @torch.no_grad()
    def inspect(self, carry: Carry, slot: int) -> dict:
        """JSON-able snapshot of one slot (engine.protocol.EVENT_DATA["carry"] names every key). Reports the
        carried state as it is (preds, q_halt, steps) and replays the slot's next supervision step (from its
        latents, or from the initial latents if it has halted) without changing the carry, recording per-cycle
        norms. Latent norm lists: one entry per cycle, the first being the starting state; each entry is a list
        over the L positions. Memory lists (with a neural memory): one entry per cycle, each a list over blocks."""
        B = carry.z_H.shape[0]
        if not 0 <= slot < B:
            raise IndexError(f"slot {slot} is out of range; the carry has slots 0 to {B - 1}")
        memory = None if carry.memory is None else MemoryState(
            {k: v[slot:slot + 1] for k, v in carry.memory.items()})
        one = Carry(z_H=carry.z_H[slot:slot + 1], z_L=carry.z_L[slot:slot + 1], steps=carry.steps[slot:slot + 1],
                    halted=carry.halted[slot:slot + 1], inputs=carry.inputs[slot:slot + 1],
                    labels=carry.labels[slot:slot + 1], memory=memory)
        logits, q_halt = self.readout(one.z_H)
        start = self.reset_halted(one, one.inputs, one.labels)
        history = [(start.z_H, start.z_L, start.memory)]
        self.deep_recursion(start.z_H, start.z_L, self.input_embedding(start.inputs), record=history,
                            memory=start.memory)
        next_logits, next_q = self.readout(history[-1][0])

        def norms(z):  # (1, L, D) -> L floats
            return [round(v, 5) for v in z[0].float().norm(dim=-1).tolist()]

        def change(a, b):  # mean over positions of |b - a|
            return round((b[0] - a[0]).float().norm(dim=-1).mean().item(), 5)

        cycles = list(zip(history, history[1:]))
        snapshot = {
            "slot": slot,
            "shapes": {"z_H": list(carry.z_H.shape), "z_L": list(carry.z_L.shape), "inputs": list(carry.inputs.shape)},
            "prefix": self.prefix, "H_cycles": self.cfg.H_cycles, "L_cycles": self.cfg.L_cycles,
            "steps": int(one.steps[0]), "max_steps": self.cfg.halt_max_steps, "halted": bool(one.halted[0]),
            "q_halt": float(q_halt[0]),
            "inputs": one.inputs[0].tolist(), "labels": one.labels[0].tolist(),
            "preds": logits[0].argmax(-1).tolist(),
            "z_H_norms": [norms(h) for h, _, _ in history],
            "z_L_norms": [norms(l) for _, l, _ in history],
            "z_H_change": [change(a[0], b[0]) for a, b in cycles],
            "z_L_change": [change(a[1], b[1]) for a, b in cycles],
            # post-norm keeps every position's norm at sqrt(D); where the latents move is the informative map
            "z_H_position_change": [norms(b[0] - a[0]) for a, b in cycles],
            "z_L_position_change": [norms(b[1] - a[1]) for a, b in cycles],
            "next_q_halt": float(next_q[0]),
            "next_preds": next_logits[0].argmax(-1).tolist(),
        }
        if memory is not None:  # per cycle and block: how far the fast weights moved, and the surprise after it
            n = len(self.net.blocks)

            def moved(before: MemoryState, after: MemoryState) -> list[float]:
                delta = MemoryState({k: after[k] - before[k] for k in after})
                return [round(float(layer.change_norm()[0]), 5) for layer in delta.split(n)]

            def surprise(state: MemoryState) -> list[float]:
                return [round(math.sqrt(sum(float(t[0].pow(2).sum()) for k, t in layer.items() if k.startswith("S"))), 5)
                        for layer in state.split(n)]

            snapshot["memory_change"] = [moved(a[2], b[2]) for a, b in cycles]
            snapshot["memory_surprise"] = [surprise(b[2]) for _, b in cycles]
        return snapshot
