"""Probes: measurements of a finished run beyond what `fit` logs, named in a study's spec (`probes: [params]`).

A probe takes the run's directories (oldest first: a retried run continued in a new one; the last holds the final
config.yaml, checkpoints and status.json) and returns named numbers, which the report treats like logged metrics.
Results are cached in the last directory's probes.json, so a re-run of the study does not measure again.
"""

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from archlab import cli
from archlab.loading import load_checkpoint
from archlab.tasks.segmentation import class_map


def built(run_dir: Path, *, meta: bool = False) -> cli.Built:
    """The run's DataModule, net and task, rebuilt from its saved config (nothing trained)."""
    config = cli.parse_fit(["-c", str(run_dir / "config.yaml")])
    return cli.build(config, meta=meta)


def trained(run_dir: Path) -> cli.Built:
    """The run's task with its best checkpoint's weights, in eval mode."""
    parts = built(run_dir)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    parts.model.load_state_dict(checkpoint["state_dict"])
    parts.model.eval()
    return parts


def params(dirs: list[Path]) -> dict[str, float]:
    """The net's trainable parameters, counted on the meta device."""
    net = built(dirs[-1], meta=True).net
    return {"params": float(sum(p.numel() for p in net.parameters() if p.requires_grad))}


def grad_t0(dirs: list[Path]) -> dict[str, float]:
    """Norm of the summed loss's gradient with respect to the first time step's input, averaged over one training
    batch of a sequence-regression run (the adding problem): at initialisation (the run's seed) and trained.

    Bengio, Simard, Frasconi 1994, "Learning long-term dependencies with gradient descent is difficult": in a plain
    RNN this gradient shrinks exponentially with the distance T - t."""
    config = cli.parse_fit(["-c", str(dirs[-1] / "config.yaml")])
    torch.manual_seed(int(config.seed_everything))
    parts = cli.build(config)
    parts.data.setup("fit")
    x, y = parts.data.on_after_batch_transfer(next(iter(parts.data.train_dataloader())), 0)  # (B, T, F), (B, 1)
    values = {"grad_t0/init": first_step_gradient(parts.model.net, x, y)}
    parts.model.load_state_dict(load_checkpoint(dirs[-1] / "checkpoints" / "best.ckpt")["state_dict"])
    values["grad_t0/trained"] = first_step_gradient(parts.model.net, x, y)
    return values


def first_step_gradient(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    x = x.clone().requires_grad_(True)
    loss = torch.nn.functional.mse_loss(net(x), y, reduction="sum")  # per-sequence gradients, not scaled by 1/B
    (grad,) = torch.autograd.grad(loss, x)  # (B, T, F)
    return float(grad[:, 0].norm(dim=-1).mean())


def boundary(dirs: list[Path]) -> dict[str, float]:
    """Boundary F1 of a segmentation run's best checkpoint on the test split: a boundary pixel counts as found when
    the other mask has a boundary within one pixel (Csurka et al. 2013, "What is a good evaluation measure for
    semantic segmentation?"), averaged over the test images."""
    parts = trained(dirs[-1])
    parts.data.setup("fit")
    parts.data.setup("test")
    scores = []
    with torch.no_grad():
        for batch in parts.data.test_dataloader():
            x, y = parts.data.on_after_batch_transfer(batch, 0)  # (B, C, H, W), (B, H, W)
            pred = class_map(parts.model.net(x))  # (B, H, W)
            scores += boundary_f1(pred, y).tolist()
    return {"boundary_f1": sum(scores) / len(scores)}


def edges(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) labels -> (B, H, W) bool: pixels whose label differs from a 4-neighbour's."""
    edge = torch.zeros_like(mask, dtype=torch.bool)
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[:, :-1] |= mask[:, 1:] != mask[:, :-1]
    edge[:, :, 1:] |= mask[:, :, 1:] != mask[:, :, :-1]
    edge[:, :, :-1] |= mask[:, :, 1:] != mask[:, :, :-1]
    return edge


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W) 0/1 -> (B, H, W): 1 within `radius` pixels (a square) of a 1."""
    return torch.nn.functional.max_pool2d(mask[:, None], 2 * radius + 1, 1, radius)[:, 0]


def boundary_f1(pred: torch.Tensor, target: torch.Tensor, *, tolerance: int = 1) -> torch.Tensor:
    """(B,) boundary F1 per image; 1.0 where neither mask has a boundary."""
    a, b = edges(pred).float(), edges(target).float()
    precision = (a * dilate(b, tolerance)).sum((1, 2)) / a.sum((1, 2)).clamp(min=1)
    recall = (b * dilate(a, tolerance)).sum((1, 2)) / b.sum((1, 2)).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return torch.where((a.sum((1, 2)) == 0) & (b.sum((1, 2)) == 0), torch.ones_like(f1), f1)


def sharpness(dirs: list[Path]) -> dict[str, float]:
    """Variance of the Laplacian (Pech-Pacheco et al. 2000, a focus measure) of 1,000 samples of a generative run's
    best checkpoint, of the test images, and their ratio: blurry samples score below the real images."""
    parts = trained(dirs[-1])
    parts.data.setup("fit")
    parts.data.setup("test")
    with torch.no_grad():
        fake = parts.model.sample(1000)  # (N, C, H, W) in [0, 1]
        real = torch.cat([parts.data.on_after_batch_transfer(b, 0)[0] for b in parts.data.test_dataloader()])
    fake_score, real_score = laplacian_variance(fake), laplacian_variance(real)
    return {"sharpness": fake_score, "sharpness_real": real_score, "sharpness_ratio": fake_score / real_score}


def laplacian_variance(images: torch.Tensor) -> float:
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]  # (1, 1, 3, 3)
    grey = images.float().mean(dim=1, keepdim=True)  # (N, 1, H, W)
    return float(torch.nn.functional.conv2d(grey, kernel).var(dim=(1, 2, 3)).mean())


def throughput(dirs: list[Path], *, repeats: int = 3) -> dict[str, float]:
    """Training speed and activation memory of a sequence run's net at its own batch size and sequence length, on
    random tokens, freshly initialised: forward + backward of the next-token cross-entropy (no optimizer step).

    `ms_per_step` and `tokens_per_s` are the median of `repeats` timed steps after one untimed; `activation_mb` is
    the size of the tensors autograd saves for the backward pass, which is what grows with the length (the attention
    matrices of a Transformer, T hidden states of an RNN), measured exactly on any device."""
    config = cli.parse_fit(["-c", str(dirs[-1] / "config.yaml")])
    parts = cli.build(config, meta=False)
    net, data = parts.model.net.train(), parts.data
    vocab, length, batch = data.shapes["vocab_size"], int(data.seq_len), int(data.batch_size)
    x = torch.randint(0, vocab, (batch, length))  # (B, T)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = net(x)  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten())
        loss.backward()
        net.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {
        "ms_per_step": 1000 * step,
        "tokens_per_s": batch * length / step,
        "activation_mb": sum(saved.values()) / 2**20,
    }


PROBES: dict[str, Callable[[list[Path]], dict[str, float]]] = {
    "throughput": throughput,
    "sharpness": sharpness,
    "params": params,
    "grad_t0": grad_t0,
    "boundary": boundary,
}


def measure(names: list[str], dirs: list[Path]) -> dict[str, float]:
    """The named probes' values for a finished run, measured once and cached (probe -> values) in probes.json."""
    cache = dirs[-1] / "probes.json"
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    for name in names:
        if name not in stored:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                stored[name] = PROBES[name](dirs)
            cache.write_text(json.dumps(stored, indent=1))
    return {k: v for name in names for k, v in stored[name].items()}
