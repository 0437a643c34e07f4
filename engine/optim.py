"""MuGrokfast: Muon for hidden matrices, AdamW for the rest, a Grokfast slow-gradient filter, QK-clip.

One training step, in order:
    loss.backward()
    opt.step():  lr schedule -> clip the global grad norm -> Grokfast filter -> Muon + AdamW steps -> QK-clip
    opt.zero_grad()

Routing: the weight of every nn.Linear (BitLinear included) that is not a head goes to torch.optim.Muon;
embeddings, the output and halting heads, norms, biases, free-standing parameters (persistent tokens,
learned initial states) and everything that is not 2-D go to torch.optim.AdamW, as Muon's authors advise.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from engine.config import OptimConfig

# Every preset fills the OptimConfig fields left unset (None). "lr" is Muon's lr under a Muon preset and
# AdamW's under "adamw"; "adamw_lr" is the fallback group's lr and only matters when Muon is on.
PRESETS: dict[str, dict] = {
    "adamw": dict(use_muon=False, lr=1e-3, adamw_lr=1e-3, momentum=0.95, nesterov=True, ns_steps=5,
                  grokfast_alpha=0.98, grokfast_lambda=0.0, qk_clip_tau=0.0),
    "muon": dict(use_muon=True, lr=0.02, adamw_lr=1e-3, momentum=0.95, nesterov=True, ns_steps=5,
                 grokfast_alpha=0.98, grokfast_lambda=0.0, qk_clip_tau=0.0),
    "phase1": dict(use_muon=True, lr=1e-3, adamw_lr=1e-3, momentum=0.95, nesterov=True, ns_steps=5,
                   grokfast_alpha=0.98, grokfast_lambda=0.3, qk_clip_tau=30.0),
    "phase5": dict(use_muon=True, lr=5e-4, adamw_lr=1e-4, momentum=0.95, nesterov=True, ns_steps=5,
                   grokfast_alpha=0.98, grokfast_lambda=2.0, qk_clip_tau=25.0),
}

# Modules whose weights stay on AdamW whatever their shape: token/puzzle embeddings and the output and
# halting heads. Muon orthogonalises whole matrices, which suits maps between hidden features only.
ADAMW_MODULES = ("*emb*", "*lm_head", "*q_head")


class OptimStateError(ValueError):
    """Optimizer state that does not belong to this model or preset; its message is one sentence."""


@dataclass(frozen=True)
class OptimSettings:
    """An OptimConfig with its preset applied: every value concrete."""

    preset: str
    use_muon: bool
    lr: float
    adamw_lr: float
    weight_decay: float
    adamw_weight_decay: float
    beta1: float
    beta2: float
    warmup_steps: int
    grad_clip: float
    schedule: str
    min_lr_ratio: float
    momentum: float
    nesterov: bool
    ns_steps: int
    muon_lr_scaling: str
    muon_exclude: tuple[str, ...]
    grokfast_alpha: float
    grokfast_lambda: float
    grokfast_scope: str
    qk_clip_tau: float


def resolve(cfg: OptimConfig) -> OptimSettings:
    """Apply the preset to every field the config left unset."""
    preset = PRESETS[cfg.preset]
    values = {}
    for f in dataclasses.fields(OptimSettings):
        value = getattr(cfg, f.name, None)
        if f.name == "use_muon":
            value = preset["use_muon"]
        elif f.name == "adamw_weight_decay" and value is None:
            value = cfg.weight_decay
        values[f.name] = preset[f.name] if value is None else value
    values["muon_exclude"] = tuple(values["muon_exclude"])
    return OptimSettings(**values)


def route_parameters(model: nn.Module, use_muon: bool, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """name -> "muon" | "adamw" | "adamw_no_decay" for every trainable parameter.

    `exclude` holds glob patterns over parameter names ("*.o_proj.weight", "net.blocks.0.*") sent to AdamW.
    AdamW decays matrices (embeddings, heads) but not gains and biases, as is usual.
    """
    modules = dict(model.named_modules())
    routes = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        module_name, _, leaf = name.rpartition(".")
        module = modules[module_name]
        hidden_matrix = (
            isinstance(module, nn.Linear)
            and leaf == "weight"
            and p.ndim == 2
            and not any(fnmatch.fnmatchcase(module_name, pat) for pat in ADAMW_MODULES)
            and not any(fnmatch.fnmatchcase(name, pat) for pat in exclude)
        )
        if use_muon and hidden_matrix:
            routes[name] = "muon"
        else:
            routes[name] = "adamw" if p.ndim >= 2 else "adamw_no_decay"
    return routes


class GrokfastEMA:
    """Grokfast's EMA filter: ema <- alpha ema + (1 - alpha) g; g <- g + lambda ema.

    The first call seeds the EMA with g itself, so it returns (1 + lambda) g. Written here because
    torch has no such filter and the rule is three lines; its EMA is part of the optimizer state.
    """

    def __init__(self, params: list[nn.Parameter], alpha: float, lamb: float):
        assert 0.0 <= alpha < 1.0, "grokfast alpha must be in [0, 1)"
        self.params = params
        self.alpha = alpha
        self.lamb = lamb
        self.ema: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def apply(self) -> None:
        if self.lamb == 0.0:
            return
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.ema[i] is None:
                self.ema[i] = p.grad.detach().clone()
            else:
                self.ema[i].mul_(self.alpha).add_(p.grad, alpha=1.0 - self.alpha)
            p.grad.add_(self.ema[i], alpha=self.lamb)

    @torch.no_grad()
    def norm(self) -> float:
        squares = [e.float().square().sum() for e in self.ema if e is not None]
        return math.sqrt(float(torch.stack(squares).sum())) if squares else 0.0

    def state_dict(self) -> dict:
        return {"ema": {i: e.clone() for i, e in enumerate(self.ema) if e is not None}}

    def load_state_dict(self, state: dict) -> None:
        self.ema = [None] * len(self.params)
        for i, e in state["ema"].items():
            i = int(i)
            if i >= len(self.params) or e.shape != self.params[i].shape:
                raise OptimStateError("the saved Grokfast filter does not match this model's parameters.")
            self.ema[i] = e.to(device=self.params[i].device, dtype=self.params[i].dtype).clone()


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Attention layers that can record their largest logit (engine.model.blocks.Attention and alikes)."""
    return [m for m in model.modules()
            if hasattr(m, "record_max_logit") and hasattr(m, "q_proj") and hasattr(m, "k_proj")]


class MuGrokfast:
    """Muon + AdamW behind one optimizer interface, with Grokfast, QK-clip, an lr schedule and figures."""

    def __init__(self, model: nn.Module, settings: OptimSettings, total_steps: int | None = None):
        self.settings = s = settings
        self.total_steps = total_steps
        self.routes = route_parameters(model, s.use_muon, s.muon_exclude)
        named = dict(model.named_parameters())
        by_route = {r: [named[n] for n, route in self.routes.items() if route == r]
                    for r in ("muon", "adamw", "adamw_no_decay")}
        self.params = [named[n] for n in self.routes]

        self.muon = None
        if by_route["muon"]:
            self.muon = torch.optim.Muon(
                [{"params": by_route["muon"], "name": "muon", "base_lr": s.lr}],
                lr=s.lr, weight_decay=s.weight_decay, momentum=s.momentum, nesterov=s.nesterov,
                ns_steps=s.ns_steps, adjust_lr_fn=s.muon_lr_scaling,
            )
        # under "adamw" every parameter is AdamW's: the main lr and weight decay are its own
        adamw_lr = s.adamw_lr if s.use_muon else s.lr
        adamw_wd = s.adamw_weight_decay if s.use_muon else s.weight_decay
        groups = [
            {"params": by_route["adamw"], "name": "adamw", "weight_decay": adamw_wd, "base_lr": adamw_lr},
            {"params": by_route["adamw_no_decay"], "name": "adamw_no_decay", "weight_decay": 0.0,
             "base_lr": adamw_lr},
        ]
        groups = [g for g in groups if g["params"]]
        self.adamw = torch.optim.AdamW(groups, lr=adamw_lr, betas=(s.beta1, s.beta2)) if groups else None

        # Default scope "aux": Grokfast filters the AdamW-routed parameters only. Muon orthogonalises whatever
        # it is given, so tilting its input toward the slow component only slows it (docs/decisions.md).
        if s.grokfast_scope == "off":
            filtered = []
        elif s.grokfast_scope == "all":
            filtered = self.params
        else:
            filtered = [named[n] for n, route in self.routes.items() if route != "muon"]
        self.grokfast = GrokfastEMA(filtered, s.grokfast_alpha, s.grokfast_lambda)

        # the largest attention logit is a per-step figure, so record it whether or not QK-clip is on
        self.attention = attention_modules(model)
        for m in self.attention:
            m.record_max_logit = True

        # under several processes: the element-wise maximum over ranks (engine.distributed.World.max), so that
        # QK-clip scales every rank's weights alike
        self.max_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None

        self.steps_done = 0
        self.record_figures = True  # per-step figures (update RMS per group, norms) for the run's curves
        self.lr_scale = 1.0  # lasting multiple of every group's lr (a rollback halves it)
        self._figures: dict[str, float] = {}

    # ---- the optimizer interface ----

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adamw) if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none)

    def lr_factor(self, step: int) -> float:
        """Linear warmup over warmup_steps, then constant, or cosine down to min_lr_ratio at total_steps."""
        s = self.settings
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.schedule == "cosine" and self.total_steps:
            progress = min(1.0, (step - s.warmup_steps) / max(1, self.total_steps - s.warmup_steps))
            return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def schedule(self, step: int, scale: float = 1.0) -> float:
        """Set every group's lr for `step` (step() calls it with its own count); returns the factor.
        The only place a group's lr is written: rollbacks and sleep ask for a scale instead."""
        factor = self.lr_factor(step) * self.lr_scale * scale
        for group in self.param_groups:
            group["lr"] = group["base_lr"] * factor
        return factor

    def set_lr_scale(self, scale: float) -> None:
        """A lasting multiple of every learning rate from the next step on (kept in the state dict)."""
        self.lr_scale = scale

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        """One step; `lr_scale` multiplies every lr for this step only (sleep's consolidation rate)."""
        self.schedule(self.steps_done, lr_scale)
        with_grad = [p for p in self.params if p.grad is not None]
        max_norm = self.settings.grad_clip if self.settings.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm) if with_grad else torch.zeros(())
        self.grokfast.apply()

        record = self.record_figures
        before = {name: [p.detach().clone() for p in g["params"]] for name, g in self._named_groups()} if record else {}
        for o in self.optimizers:
            o.step()

        clip = self.apply_qk_clip()
        if record:
            figures = {"grad_norm": float(grad_norm), "grokfast_norm": self.grokfast.norm()}
            for name, group in self._named_groups():
                figures[f"lr_{name}"] = group["lr"]
                figures[f"update_rms_{name}"] = _rms_change(before[name], group["params"])
            self._figures = {**figures, **clip}
        self.steps_done += 1

    @torch.no_grad()
    def apply_qk_clip(self) -> dict[str, float]:
        """Scale the query and key rows of every head whose recorded logit exceeded tau by sqrt(tau / max),
        so that head's largest logit on the same input becomes tau. Consumes the recorded logits.
        Exact for plain linears; with BitLinear q/k (STE mode) the per-tensor ternary scale makes it approximate."""
        tau = self.settings.qk_clip_tau
        largest, clipped = -math.inf, 0
        if self.max_over_ranks is not None and self.attention:
            self._share_max_logits()
        for attn in self.attention:
            max_logit, attn.max_logit = attn.max_logit, None
            if max_logit is None:
                continue
            largest = max(largest, float(max_logit.max()))
            over = max_logit > tau
            if tau <= 0 or not bool(over.any()):
                continue
            clipped += int(over.sum())
            factor = torch.where(over, (tau / max_logit).sqrt(), torch.ones_like(max_logit))  # (H,)
            rows = factor.repeat_interleave(attn.q_proj.weight.size(0) // factor.numel())  # (H * d_head,)
            attn.q_proj.weight.mul_(rows[:, None].to(attn.q_proj.weight.dtype))
            attn.k_proj.weight.mul_(rows[:, None].to(attn.k_proj.weight.dtype))
        if largest == -math.inf:
            return {}
        return {"attn_logit_max": largest, "qk_clipped_heads": float(clipped)}

    def _share_max_logits(self) -> None:
        """Every attention layer's recorded logit becomes the largest over ranks (one all-reduce for all)."""
        recorded = [a.max_logit if a.max_logit is not None else torch.full((a.n_heads,), -math.inf,
                                                                             device=a.q_proj.weight.device)
                    for a in self.attention]
        shared = self.max_over_ranks(torch.cat([m.float() for m in recorded]))
        for attn, m in zip(self.attention, shared.split([m.numel() for m in recorded])):
            attn.max_logit = None if bool(torch.isinf(m).all()) else m

    def stats(self) -> dict[str, float]:
        """Figures of the last step for the run store: lr and update RMS per group, grad norm,
        Grokfast filter norm, largest attention logit and the number of heads QK-clip touched."""
        return dict(self._figures)

    def state_dict(self) -> dict:
        return {
            "preset": self.settings.preset,
            "routes": dict(self.routes),
            "steps_done": self.steps_done,
            "lr_scale": self.lr_scale,
            "muon": self.muon.state_dict() if self.muon else None,
            "adamw": self.adamw.state_dict() if self.adamw else None,
            "grokfast": self.grokfast.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("routes") != self.routes:
            raise OptimStateError(
                "the saved optimizer state routes parameters differently from this model and preset; "
                "resume with the config the run was started with."
            )
        if self.muon:
            self.muon.load_state_dict(state["muon"])
        if self.adamw:
            self.adamw.load_state_dict(state["adamw"])
        self.grokfast.load_state_dict(state["grokfast"])
        self.steps_done = int(state["steps_done"])
        self.lr_scale = float(state.get("lr_scale", 1.0))
        # the config's learning rates win over the saved ones, as for every other setting
        adamw_lr = self.settings.adamw_lr if self.settings.use_muon else self.settings.lr
        for name, group in self._named_groups():
            group["base_lr"] = self.settings.lr if name == "muon" else adamw_lr

    def _named_groups(self):
        return [(g["name"], g) for g in self.param_groups]


def _rms_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    squares = torch.stack([(a.detach().float() - b.float()).square().sum() for a, b in zip(after, before)])
    count = sum(b.numel() for b in before)
    return math.sqrt(float(squares.sum()) / max(1, count))  # one device sync per group


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int | None = None) -> MuGrokfast:
    """The optimizer a run config asks for; pass total_steps (train.max_steps) for the cosine schedule."""
    return MuGrokfast(model, resolve(cfg), total_steps)
