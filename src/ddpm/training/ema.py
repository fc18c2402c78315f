"""Averages of the weights: the classic EMA that a run samples with, and EDM2's post-hoc EMA.

Ho et al. 2020 (App. B) sample from an EMA with decay 0.9999. Over a short run such a slow average
still remembers the random initialisation, so by default the decay warms up as
min(decay, (1 + n) / (10 + n)) after n updates: early on the average follows the model closely.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from ..errors import InputError


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- decay * ema + (1 - decay) * weights; buffers are copied as they are."""
        self.updates += 1
        weight = 1.0 - self.current_decay()
        averaged = list(self.model.parameters())
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, weight)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)


# ---- post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models") ----
#
# A power-function EMA with exponent gamma averages, after t updates, the weights theta_tau of every
# step tau <= t with weight proportional to tau^gamma (EDM2 eq. 3): its update is
#     theta^_t = beta_t theta^_{t-1} + (1 - beta_t) theta_t,    beta_t = (1 - 1/t)^(gamma + 1),
# and unrolled, theta_tau's weight is (tau/t)^(gamma+1) - ((tau-1)/t)^(gamma+1): exactly the integral of
# the profile p(s) = (gamma+1) s^gamma / t^(gamma+1) over the step's unit interval (tau-1, tau]. Its
# length is sigma_rel, the profile's standard deviation over its mean (EDM2 eq. 4). Snapshots of a
# few such EMAs at several times span a space of profiles; the EMA of any other length at time t is
# the combination of snapshots whose profile is closest to its own in L2, a least-squares problem in
# the profiles' inner products, which are closed forms (EDM2 Appendix C.3).


def gamma_to_sigma_rel(gamma: float) -> float:
    """EDM2 eq. 4: the relative standard deviation of the profile s^gamma on [0, 1]."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent whose profile has relative width `sigma_rel`: the largest real root of
    sigma_rel^2 (gamma + 2)^2 (gamma + 3) = gamma + 1, in (0, 0.2887) for gamma > 0."""
    if not 0 < sigma_rel < gamma_to_sigma_rel(0.0):
        raise InputError(f"an EMA length sigma_rel must be between 0 and {gamma_to_sigma_rel(0.0):.4f}, the uniform "
                         f"average's (got {sigma_rel})")
    k = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - k, 12.0 - k])
    return float(max(root.real for root in roots if abs(root.imag) < 1e-9))


class PowerEMA:
    """The power-function EMAs of `sigma_rels` (EDM2 keeps 0.05 and 0.10), each a copy of the model."""

    def __init__(self, model: nn.Module, sigma_rels: list[float]):
        self.sigma_rels = list(sigma_rels)
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.models = [copy.deepcopy(model).eval().requires_grad_(False) for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, model: nn.Module, t: int) -> None:
        """The t-th update (t >= 1; at t = 1 each average is the weights themselves)."""
        current = [p.detach() for p in model.parameters()]
        for gamma, average in zip(self.gammas, self.models):
            beta = (1.0 - 1.0 / t) ** (gamma + 1.0)
            torch._foreach_lerp_(list(average.parameters()), current, 1.0 - beta)
            for mine, theirs in zip(average.buffers(), model.buffers()):
                mine.copy_(theirs)

    def named(self) -> dict[str, nn.Module]:
        """The averages by the names a checkpoint and a snapshot keep them under: power_0, power_1, ..."""
        return {f"power_{i}": average for i, average in enumerate(self.models)}

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: average.state_dict() for name, average in self.named().items()}


def _profile_products(t_a: np.ndarray, g_a: np.ndarray, t_b: np.ndarray, g_b: np.ndarray) -> np.ndarray:
    """<p_a, p_b> = integral of p_a p_b over s >= 0 for profiles p(s) = (g+1) s^g / t^(g+1) on [0, t]:
    (g_a+1)(g_b+1) min(t_a, t_b)^(g_a+g_b+1) / ((g_a+g_b+1) t_a^(g_a+1) t_b^(g_b+1)), by pairs (outer)."""
    t_a, g_a, t_b, g_b = t_a[:, None], g_a[:, None], t_b[None, :], g_b[None, :]
    low = np.minimum(t_a, t_b)
    log = ((g_a + g_b + 1) * np.log(low) - (g_a + 1) * np.log(t_a) - (g_b + 1) * np.log(t_b))
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * np.exp(log)


def posthoc_coefficients(times, gammas, t: float, gamma: float) -> tuple[np.ndarray, float]:
    """The combination of snapshots (taken at `times`, of EMAs with exponents `gammas`) whose profile
    is closest in L2 to the EMA of exponent `gamma` at time `t` (EDM2 Appendix C.3), and how far it
    stays: ||sum x_i p_i - p|| / ||p||, 0 when the profile is one of the snapshots'. The weights sum
    to one (a Lagrange multiplier beside EDM2's normal equations), so that the result is an average
    of the weights: a run whose weights stood still rebuilds to them at any length."""
    times, gammas = np.asarray(times, dtype=np.float64), np.asarray(gammas, dtype=np.float64)
    scale = max(times.max(), float(t))  # times over the largest: the products stay in floating range
    times, target_t, target_g = times / scale, np.array([float(t) / scale]), np.array([float(gamma)])
    gram = _profile_products(times, gammas, times, gammas)
    wanted = _profile_products(times, gammas, target_t, target_g)[:, 0]
    n = len(times)
    system = np.block([[gram, np.ones((n, 1))], [np.ones((1, n)), np.zeros((1, 1))]])
    x = np.linalg.lstsq(system, np.append(wanted, 1.0), rcond=None)[0][:n]
    norm = _profile_products(target_t, target_g, target_t, target_g)[0, 0]
    residual = max(0.0, float(x @ gram @ x - 2 * x @ wanted + norm))
    return x, math.sqrt(residual / norm)


MAX_RESIDUAL = 0.05  # how far (relative L2) a reconstructed profile may stay from the one asked for


def _snapshots(run) -> tuple[list, list]:
    """A run's intact snapshots with their meta (a damaged one left out, and said so), and their parts:
    (folder, key, step, gamma) per power EMA in each."""
    import warnings

    from ..errors import CheckpointDamaged, DdpmWarning
    from ..storage.checkpoint import verify

    snapshots = []
    for folder in run.all_snapshots():
        try:
            snapshots.append((folder, verify(folder)))
        except CheckpointDamaged as error:
            warnings.warn(f"{error}; left out of the reconstruction", DdpmWarning, stacklevel=3)
    if not snapshots:
        raise InputError(f"{run.path} keeps no post-hoc EMA snapshots; train with --set train.posthoc_ema=[0.05,0.1] "
                         f"to keep them")
    parts = [(folder, f"power_{i}", meta["step"], gamma) for folder, meta in snapshots
             for i, gamma in enumerate(meta["gammas"])]
    return snapshots, parts


def residuals(path, sigma_rels) -> dict[float, float]:
    """How far (relative L2) the run's snapshots stay from the profile of each length: those above
    MAX_RESIDUAL cannot be rebuilt."""
    from ..storage.checkpoint import RunDir

    snapshots, parts = _snapshots(RunDir(path))
    step = snapshots[-1][1]["step"]
    return {s: posthoc_coefficients([p[2] for p in parts], [p[3] for p in parts], step, sigma_rel_to_gamma(s))[1]
            for s in sigma_rels}


def reconstruct(path, sigma_rels: list[float]) -> list:
    """Write, into the run at `path`, the EMA of each length in `sigma_rels` at the run's last snapshot
    (its final step), combined from all its intact snapshots (`posthoc_coefficients`); each one a
    checkpoint folder of its own (RunDir.reconstructed, replaced if there) that every command loads
    with --ema. Every length is checked before anything is written; a damaged snapshot is left out,
    and said so."""
    from ..storage.checkpoint import RunDir, load_weights, write_sealed

    run = RunDir(path)
    snapshots, parts = _snapshots(run)
    times, gammas = [p[2] for p in parts], [p[3] for p in parts]
    step = snapshots[-1][1]["step"]
    solved = {}
    for sigma_rel in sigma_rels:
        x, residual = posthoc_coefficients(times, gammas, step, sigma_rel_to_gamma(sigma_rel))
        if residual > MAX_RESIDUAL:
            tracked = sorted({s for _, meta in snapshots for s in meta["sigma_rels"]})
            raise InputError(f"the EMA of length {sigma_rel} is beyond what {len(snapshots)} snapshots of lengths "
                             f"{', '.join(map(str, tracked))} can rebuild (its profile stays {residual:.0%} away, more "
                             f"than {MAX_RESIDUAL:.0%}); ask for a length nearer those")
        solved[sigma_rel] = (x, residual)
    averaged: dict[float, dict] = {sigma_rel: {} for sigma_rel in sigma_rels}
    for i, (folder, key, _, _) in enumerate(parts):
        weights = load_weights(folder, key)
        for sigma_rel, (x, _) in solved.items():
            state = averaged[sigma_rel]
            for name, tensor in weights.items():
                if not tensor.is_floating_point():
                    state[name] = tensor  # a count or an index: the newest snapshot's
                    continue
                term = tensor.double() * float(x[i])
                state[name] = term if name not in state else state[name] + term
    written = []
    template = load_weights(parts[-1][0], parts[-1][1])  # the dtypes the snapshots hold
    for sigma_rel, state in averaged.items():
        x, residual = solved[sigma_rel]
        final = run.reconstructed(sigma_rel)
        meta = {"step": step, "sigma_rel": sigma_rel, "residual": residual, "snapshots": len(snapshots),
                "coefficients": [round(float(c), 8) for c in x]}
        write_sealed(final, {"ema": {k: v.to(template[k].dtype) for k, v in state.items()}}, meta, replace=True)
        written.append(final)
    return written


SWEEP_FIELDS = ("weights", "sigma_rel", "step", "fid", "kid", "samples")


def sweep(path, sigma_rels, n: int, evaluator, device: str = "auto", seed: int = 0) -> tuple[list[dict], dict]:
    """Score the run's classic EMA and the EMA of each length in `sigma_rels` its snapshots can rebuild
    (the others are left out, and said so) by the FID of `n` samples drawn with the run's own sampler
    from the same noise; choose the best as the run's default weights (RunDir.weights). Writes
    ema/sweep.csv, ema/sweep.png (FID against sigma_rel) and ema/chosen.json into the run. Returns the
    rows and the choice."""
    import csv
    import json

    from ..pipeline import Pipeline
    from ..storage.atomic import atomic_write
    from ..storage.checkpoint import RunDir
    from ..storage.files import plot_ema_sweep

    run = RunDir(path)
    far = {s: r for s, r in residuals(path, sigma_rels).items() if r > MAX_RESIDUAL}
    for s, r in far.items():
        print(f"length {s:g} left out: the snapshots stay {r:.0%} from its profile (at most {MAX_RESIDUAL:.0%})")
    lengths = [s for s in sigma_rels if s not in far]
    if not lengths:
        raise InputError(f"none of the lengths {', '.join(map(str, sigma_rels))} can be rebuilt from {run.path}'s "
                         f"snapshots; ask for lengths nearer those it tracked")
    folders = [None, *reconstruct(path, lengths)]
    rows = []
    for sigma_rel, folder in zip([None, *lengths], folders):
        pipe = Pipeline.from_run(path, checkpoint=folder, device=device)
        scores = evaluator(pipe.draw(pipe.plan(n), seed))
        rows.append({"weights": "classic" if folder is None else "post-hoc", "sigma_rel": sigma_rel, "step": pipe.step,
                     "fid": round(scores["fid"], 4), "kid": round(scores["kid"], 6), "samples": n})
        print(f"{'classic EMA' if folder is None else f'sigma_rel {sigma_rel:g}':>15}: FID {scores['fid']:.3f}", flush=True)
    best = min(rows, key=lambda row: row["fid"])
    chosen = {"sigma_rel": best["sigma_rel"], "step": best["step"], "fid": best["fid"], "classic_fid": rows[0]["fid"],
              "samples": n}
    folder = run.chosen_path.parent

    def write_csv(tmp):
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, SWEEP_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(folder / "sweep.csv", write_csv)
    plot_ema_sweep(rows, folder / "sweep.png", f"{run.path.name}, step {best['step']}, {n} samples")
    atomic_write(run.chosen_path, lambda tmp: tmp.write_text(json.dumps(chosen, indent=2)))
    return rows, chosen
