"""Editing with a trained model: inpainting, img2img, inversion and interpolation, each through the
run's Pipeline (its plan, denoiser and latents) and the plain functions of diffusion/editing.py.

    pipe = Pipeline.from_run("runs/mnist")
    edit = Editor(pipe)
    filled = edit.inpaint(image, mask, n=4)             # RePaint (Lugmayr et al. 2022)
    varied = edit.img2img(image, strength=0.5, n=4)     # SDEdit (Meng et al. 2022)
    x_T = edit.invert(image)                            # DDIM inversion; edit.reconstruct(x_T) goes back
    frames = edit.interpolate(a, b, frames=8)           # slerp between the inverted noises

Images come as PIL images, uint8 arrays or tensors, or float tensors in [0, 1]; results are uint8
[N, C, H, W], floats in [0, 1] or PIL images (`output`), as the Pipeline draws them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .diffusion import editing
from .diffusion.samplers import Callback, sample_ddim
from .errors import InputError
from .pipeline import Classes, Pipeline, Plan, as_output, batch_seed, check_output
from .registry import SAMPLERS


def repaint_eta(plan: Plan) -> float:
    """The eta of RePaint's DDIM steps for `plan`'s sampler (its spec's `repaint_eta`: DDPM's is 1,
    DDIM's the run's), or the refusal of a sampler that takes no DDIM steps."""
    if plan.spec.repaint_eta is None:
        takers = [spec.name for spec in SAMPLERS if spec.repaint_eta is not None]
        raise InputError(f"inpainting takes {' or '.join(takers)} steps, not {plan.sampler}; use --sampler ddpm")
    return plan.spec.repaint_eta(plan.options)


class Editor:
    """The edits of one pipeline: each checks everything before its work, as sampling does."""

    def __init__(self, pipe: Pipeline):
        self.pipe = pipe

    @torch.no_grad()
    def inpaint(self, image, mask, n: int = 1, sampler: Optional[str] = None, steps: Optional[int] = None,
                resample: int = 1, jump: int = 10, seed: int = 0, classes: Classes = None,
                guidance: Optional[float] = None, output: str = "uint8", callback=None):
        """n completions of each image where `mask` is white (>= half): white is filled, black is
        kept exactly. Runs the steps of a sampler that takes DDIM's steps (its spec's `repaint_eta`:
        DDPM's, eta 1, or DDIM's with the run's eta) with RePaint's resampling: back `jump` steps,
        `resample` - 1 times at every jump point. `callback(level, x, target)` sees every step
        (editing.inpaint)."""
        pipe = self.pipe
        x0, plan, labels, generator = self._setup(image, n, sampler, steps, guidance, classes, seed, output)
        eta = repaint_eta(plan)
        keep = self.mask_tensor(mask) < 0.5
        if keep.all() or not keep.any():
            raise InputError("the mask must mark some pixels to fill (white) and some to keep (black); "
                             f"this one {'keeps' if keep.all() else 'fills'} every pixel")
        keep_model = keep.to(pipe.device)
        if pipe.codec is not None:  # a latent is kept only where all the pixels it covers are kept
            f = pipe.codec.factor
            keep_model = -torch.nn.functional.max_pool2d(-keep_model[None].float(), f)[0] > 0.5
        x = editing.inpaint(pipe.denoiser(plan, labels), self._to_model(x0), keep_model, pipe.diffusion.schedule,
                            plan.timesteps, eta=eta, resample=resample, jump=jump, generator=generator,
                            callback=callback)
        images = pipe.to_images(x)
        if pipe.codec is not None:  # the decoder only approximates the kept pixels: those are the image's own
            images = torch.where(keep.cpu(), x0.cpu(), images)
        return as_output(images, output)

    @torch.no_grad()
    def img2img(self, image, strength: float, n: int = 1, sampler: Optional[str] = None, steps: Optional[int] = None,
                seed: int = 0, classes: Classes = None, guidance: Optional[float] = None, output: str = "uint8",
                callback: Optional[Callback] = None):
        """SDEdit: n versions of each image, noised to the level `strength` selects and sampled back
        (0 returns the image, 1 is plain sampling), with any sampler and guidance; `callback` sees
        the sampler's steps."""
        pipe = self.pipe
        x0, plan, labels, generator = self._setup(image, n, sampler, steps, guidance, classes, seed, output)
        x = editing.img2img(plan.function(), pipe.denoiser(plan, labels), self._to_model(x0), strength,
                            pipe.diffusion.schedule, plan.timesteps, generator=generator, callback=callback)
        return as_output(pipe.to_images(x), output)

    @torch.no_grad()
    def invert(self, image, steps: Optional[int] = None) -> Tensor:
        """DDIM inversion: the x_T [N, C, H, W] from which `reconstruct` (DDIM, eta 0, the same steps)
        returns about `image`. Neither clips x0, which would make the map non-invertible."""
        pipe = self.pipe
        x0, plan, _, _ = self._setup(image, 1, "ddim", steps, None, None, 0, eta=0.0)
        denoiser = pipe.diffusion.denoiser(pipe.network, clip_denoised=False)
        return editing.invert(denoiser, self._to_model(x0), pipe.diffusion.schedule, plan.timesteps)

    @torch.no_grad()
    def reconstruct(self, x_T: Tensor, steps: Optional[int] = None, output: str = "uint8"):
        """Deterministic DDIM (eta 0, no clipping) from x_T: the inverse of `invert`."""
        pipe = self.pipe
        check_output(output)
        plan = pipe.plan(None, "ddim", steps, eta=0.0)
        denoiser = pipe.diffusion.denoiser(pipe.network, clip_denoised=False)
        x = sample_ddim(denoiser, x_T.to(pipe.device), pipe.diffusion.schedule, plan.timesteps)
        return as_output(pipe.to_images(x), output)

    @torch.no_grad()
    def interpolate(self, a, b, frames: int = 8, steps: Optional[int] = None, output: str = "uint8"):
        """`frames` images between a and b (both included, about): each inverted to x_T, the noises
        walked along a spherical path (slerp), and each point sampled back with DDIM."""
        check_output(output)
        if frames < 2:
            raise InputError(f"--frames must be >= 2 (got {frames})")
        noise_a, noise_b = self.invert(a, steps), self.invert(b, steps)
        if len(noise_a) != 1 or len(noise_b) != 1:
            raise InputError("interpolate takes one image for each end")
        path = editing.slerp(noise_a[0], noise_b[0], [k / (frames - 1) for k in range(frames)])
        return self.reconstruct(path, steps, output)

    def image_tensor(self, images) -> Tensor:
        """PIL image(s), uint8 arrays [H, W(, C)] or [N, H, W, C], uint8 tensors [(N,) C, H, W], or float
        tensors in [0, 1], as floats [N, C, H, W] in [-1, 1] on the pipeline's device, of the run's shape."""
        pipe = self.pipe
        x = _as_tensor(images)
        if x.ndim == 3:
            x = x[None]
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if tuple(x.shape[1:]) != pipe.image_shape:
            c, h, w = pipe.image_shape
            raise InputError(f"the image is {'x'.join(map(str, x.shape[1:]))} (channels x height x width) but "
                             f"this run makes {c}x{h}x{w} images; convert or resize it first")
        return (x * 2 - 1).to(pipe.device)

    def mask_tensor(self, mask) -> Tensor:
        """A mask as floats [H, W] in [0, 1] (uint8 / 255), of the run's image size: >= 0.5 is filled."""
        pipe = self.pipe
        m = _as_tensor(mask)
        m = m.float() / 255 if m.dtype == torch.uint8 else m.float()
        if m.ndim == 3 and m.shape[0] in (1, 3, 4):  # a gray or RGB(A) picture: its first channel
            m = m[0]
        _, h, w = pipe.image_shape
        if tuple(m.shape) != (h, w):
            raise InputError(f"the mask is {'x'.join(map(str, m.shape))} but the image is {h}x{w}; give a mask of the "
                             "image's size (white: fill, black: keep)")
        return m

    def _setup(self, image, n: int, sampler, steps, guidance, classes, seed: int, output: str = "uint8", eta=None):
        """Everything an edit checks before its work, and what it starts from."""
        pipe = self.pipe
        check_output(output)
        if n < 1:
            raise InputError(f"--n must be >= 1 (got {n})")
        x0 = self.image_tensor(image).repeat_interleave(n, dim=0)
        plan = pipe.plan(len(x0), sampler, steps, None, classes, guidance, eta=eta)
        return x0, plan, plan.labels, torch.Generator(device=pipe.device).manual_seed(batch_seed(seed, 0))

    def _to_model(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] as what the network denoises: a latent run encodes."""
        return x if self.pipe.codec is None else self.pipe.codec.encode(x.to(self.pipe.device))


def _as_tensor(images) -> Tensor:
    """PIL images and numpy arrays (channels last) as tensors (channels first); tensors as they are."""
    if isinstance(images, Tensor):
        return images
    if isinstance(images, (list, tuple)):
        return torch.stack([_as_tensor(image) for image in images])
    array = np.asarray(images)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(np.array(array))  # a copy: PIL arrays are read-only
    return tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
