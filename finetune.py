"""Stage 3: reward-weighted fine-tuning and the before/after evaluation (Lee et al. 2023, Sec. 3.3).

1. D_model: the labeled feedback images plus fresh *unlabeled* samples of the pretrained model
   on seen feedback prompts, every image weighted by the reward model's score r_phi(x, z)
   (feedback.load_d_model). D_pre: the web corpus (pretraining data).
2. Fine-tune with Eq. 2: reward-weighted denoising loss on D_model + beta * denoising loss on
   D_pre, half of every batch from each (losses.finetune_loss), in the same training loop as
   stage 0 (train_loop.py). Beyond the paper, each switched by a flag: the weights are rescaled
   so that prompts the model rarely gets right keep their share of D_model (--balance,
   losses.balance_groups); the model's own samples teach only the high-noise timesteps
   (--model_t_min, train_loop.step_loss), and below that cut D_pre keeps its pretraining
   weight 1 in place of beta (--beta_below_cut); the lowest-noise steps, which no feedback
   teaches, are sampled with the pretrained model (--pretrained_below, unet.PretrainedBelowCut);
   a KL anchor keeps the model's noise prediction on its own samples close to the frozen
   pretrained model's (--anchor, losses.anchor_loss).
3. Rounds of feedback (the paper names online feedback as its next step): in round k >= 2 the
   current model is sampled afresh on the feedback prompts, stage 1's labeler labels a budget of
   those samples, the reward is trained again on every label so far, and the model is
   fine-tuned again with Eq. 2 on its new samples.
4. Two more runs make the result honest: the *control* (the same steps, rounds and optimizer on
   D_pre alone: whatever it gains is extra training, not feedback) and *gold* (the judge's
   verdicts as weights: a perfect reward model, the ceiling of the method). `paper` is the
   paper's method as the paper has it: one offline round, every timestep, no balancing, no
   anchor.
5. Keep the best round: after each round the model is sampled on held-out prompts the
   evaluation does not hold, and a run keeps the round with the highest mean learned reward
   there among those whose well-formed rate stays within --keep_tolerance of the pretrained
   model's (evaluate.pick_round; round 0, the pretrained model, is always allowed). No label
   and no evaluation prompt takes part in the choice. The control keeps its last round: it is
   the same-compute reference, and the reward has nothing to choose among its rounds; so does
   a one-round run (the paper's).
6. Evaluate the round each run keeps (its result) on the same prompts, seeds and sampler noise
   as the pretrained model, with the gold judge; report.py writes the tables, grids and plots,
   the round-by-round curve from the held-out signal. --eval_every_round evaluates every round
   (the curve on the evaluation prompts too; the kept round's numbers are the same).
   --evaluation val draws other seeds of the same prompts: choose settings there, report on
   the default (test) seeds.

    python finetune.py                                   # after train_reward.py: feedback, control
    python finetune.py --runs feedback,control,gold --best_of_n 4  # + a perfect reward, best-of-4
    python finetune.py --runs paper,control --rounds 1   # the paper's method and its control
    python finetune.py --runs labeled_only,labeled_unlabeled_beta0,paper,beta1 --rounds 1 \\
        --steps 750 --eval_samples_per_prompt 8 --out_dir runs/ablation  # Table 3
    torchrun --standalone --nproc_per_node 8 finetune.py --preset gpu  # 8 GPUs (DDP): rank 0
        samples, labels, evaluates and writes; every rank trains on its share of each batch
"""
import copy
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tiny_rlhf_t2i import distributed, report, seeds
from tiny_rlhf_t2i.config import check_range, parse_config, require, run
from tiny_rlhf_t2i.corpus import WebCorpus
from tiny_rlhf_t2i.diffusion import NUM_TRAIN_TIMESTEPS, Scheduler
from tiny_rlhf_t2i.evaluate import Evaluator, generate, pick_round
from tiny_rlhf_t2i.feedback import (DModel, Feedback, collect, feedback_records, load_d_model,
                                    load_feedback, stack_images)
from tiny_rlhf_t2i.files import atomic_write_text, check_writable, pick_device, save_checkpoint
from tiny_rlhf_t2i.kernels import BACKENDS, resolve_loss_backend
from tiny_rlhf_t2i.losses import balance_groups, eq2_weights, kl_step_weights
from tiny_rlhf_t2i.reward import RewardTrainConfig, load_reward, load_stage2, train_reward_model
from tiny_rlhf_t2i.train_loop import Anchor, Batch, LoopConfig, drop_captions, train
from tiny_rlhf_t2i.unet import PretrainedBelowCut, load_model


@dataclasses.dataclass
class FinetuneConfig(LoopConfig):
    """Stage 3: reward-weighted fine-tuning (Eq. 2) and evaluation."""
    preset: str = "cpu"  # the named preset these values started from (--preset)
    unet_dir: str = "runs/unet"  # stage 0 run folder (ckpt.pt: the pretrained model)
    reward_dir: str = "runs/reward"  # stage 2 run folder (reward.pt, clip.pt)
    feedback_dir: str = "data/feedback"  # stage 1 feedback sets; unlabeled samples go here too
    out_dir: str = "runs/finetune"  # run folder: one sub-folder per run, summary.md, grids
    runs: str = "feedback,control"  # fine-tuning runs, comma-separated (RUNS in finetune.py)
    rounds: int = 3  # rounds of feedback, each on fresh samples of the current model (1: paper)
    model_t_min: int = 650  # own samples teach timesteps >= this only (0: every t, the paper)
    anchor: float = 0.0  # lambda: weight of the KL anchor to the pretrained model (0: off)
    beta_below_cut: float = 1.0  # D_pre's weight at t < model_t_min (= beta: Eq. 2 as written)
    pretrained_below: int = 300  # sample t < this with the pretrained model (0: never)
    labels_per_round: int = 500  # new labels by stage 1's labeler in each round after the first
    unlabeled_per_category: int = 1000  # own samples per category and round (paper: 16K in all)
    beta: float = 0.1  # weight of the pretraining loss, Eq. 2 (paper: 1; see docs/results.md)
    model_fraction: float = 0.5  # fraction of each batch from D_model (paper: half)
    balance: bool = True  # rescale weights per (category, number) group (losses.balance_groups)
    steps: int = 1500  # fine-tuning steps per run, split evenly over its rounds
    batch_size: int = 128  # images per step, D_model and D_pre together
    lr: float = 5e-4  # peak AdamW learning rate (warmup, then cosine decay to 0)
    warmup_steps: int = 50  # linear warmup steps
    weight_decay: float = 0.01  # AdamW weight decay
    ema_decay: float = 0.995  # EMA of the fine-tuned weights (starts at the pretrained EMA)
    p_uncond: float = 0.1  # caption dropout on every row, as in pretraining (guidance needs it)
    guidance_scale: float = 3.0  # sampling for the evaluation (and best-of-n)
    # Below the evaluation's guidance: guided samples narrow each prompt, and rounds of training
    # on them narrow it round after round (docs/results.md, sections 19 and 22).
    d_model_guidance: float = 1.5  # guidance of the model's own samples for D_model
    num_inference_steps: int = 15  # DPM-Solver++(2M) steps
    evaluation: str = "test"  # seeds of the evaluation: test (reported) or val (to choose settings)
    eval_samples_per_prompt: int = 16  # samples per fixed evaluation prompt (88 prompts)
    heldout_samples_per_prompt: int = 4  # per held-out prompt (240), to choose the kept round
    eval_every_round: bool = False  # evaluate every round, not only the kept one (the tables')
    keep_tolerance: float = 0.015  # held-out well-formed a kept round may lose (0 to 1)
    best_of_n: int = 1  # best-of-n baseline: keep the best of n pretrained samples (1: off)
    fd_net_steps: int = 600  # training steps of the FD feature network (cached in runs/fd)
    loss_backend: str = "auto"  # Eq. 2's weighted MSE: auto, torch or cuda (fused kernel)
    device: str = "auto"  # auto, cpu or cuda
    threads: int = 0  # torch CPU threads (0: torch's default)

    def __post_init__(self):
        LoopConfig.__post_init__(self)
        unknown = [r for r in self.runs.split(",") if r not in RUNS]
        require(not unknown, f"--runs: unknown run(s) {unknown}; valid runs: {', '.join(RUNS)}")
        require(self.loss_backend in BACKENDS, f"--loss_backend must be one of {BACKENDS}")
        require(self.evaluation in ("test", "val"),
                f"--evaluation must be test or val, not {self.evaluation!r}")
        check_range(self, "model_fraction", 0, 1, open_lo=True)
        check_range(self, "p_uncond", 0, 1, open_hi=True)
        check_range(self, "beta beta_below_cut anchor unlabeled_per_category guidance_scale "
                    "d_model_guidance threads", 0)
        check_range(self, "heldout_samples_per_prompt keep_tolerance", 0)
        check_range(self, "rounds", 1)
        check_range(self, "model_t_min", 0, NUM_TRAIN_TIMESTEPS, open_hi=True)
        require(0 <= self.pretrained_below <= self.model_t_min,
                f"--pretrained_below ({self.pretrained_below}) must be in [0, --model_t_min "
                f"({self.model_t_min})]: the pretrained model may draw only the steps that "
                f"the model's own samples do not teach")
        check_range(self, "labels_per_round", 0, 4 * self.unlabeled_per_category)
        require(self.steps >= self.rounds, f"--steps ({self.steps}) must be at least --rounds "
                f"({self.rounds}): the steps are split over the rounds")
        check_range(self, "best_of_n eval_samples_per_prompt num_inference_steps fd_net_steps", 1)


@dataclasses.dataclass(frozen=True)
class Run:
    """What one fine-tuning run trains on; `settings` overrides the command line's config."""
    weights: str | None  # D_model weights: "reward" (r_phi), "gold" (the judge), None (control)
    unlabeled: bool = True  # D_model holds the unlabeled samples too (the labeled ones always)
    settings: dict = dataclasses.field(default_factory=dict)  # FinetuneConfig fields it fixes

    def config(self, cfg: FinetuneConfig) -> FinetuneConfig:
        """This run's settings, resolved once."""
        return dataclasses.replace(cfg, **self.settings)


RUNS = {
    "feedback": Run("reward"),  # the method, at the command line's settings
    "control": Run(None),  # same steps and rounds, D_pre only: extra training without feedback
    "gold": Run("gold"),  # a perfect reward model: the ceiling of the method
    # The paper's fine-tuning schedule, on stage 3's reward (lambda 0; stage 2 keeps the paper's
    # Eq. 1 reward as reward_pc.pt)
    "paper": Run("reward", settings=dict(rounds=1, model_t_min=0, balance=False, anchor=0.0,
                                         pretrained_below=0)),
    "unbalanced": Run("reward", settings=dict(balance=False)),  # plain Eq. 2 weights
    # Own samples teach every timestep and the KL anchor holds the model near the pretrained one
    # (DPOK's regularizer) instead of the timestep cut, weighted per step as the exact KL.
    "anchor_kl": Run("reward", settings=dict(model_t_min=0, anchor=1.0, pretrained_below=0)),
    # The paper's Table 3: labeled only; + unlabeled; + pretraining loss (= paper); beta.
    "labeled_only": Run("reward", unlabeled=False, settings=dict(beta=0.0)),
    "labeled_unlabeled_beta0": Run("reward", settings=dict(beta=0.0)),
    "beta0.5": Run("reward", settings=dict(beta=0.5)),
    "beta1": Run("reward", settings=dict(beta=1.0)),
    "beta2": Run("reward", settings=dict(beta=2.0)),
}

PRESETS = {
    "smoke": dict(unet_dir="runs/smoke/unet", reward_dir="runs/smoke/reward",
                  feedback_dir="runs/smoke/feedback", out_dir="runs/smoke/finetune",
                  unlabeled_per_category=8, labels_per_round=8, steps=10, rounds=2,
                  batch_size=16, num_inference_steps=5,
                  eval_samples_per_prompt=1, heldout_samples_per_prompt=0, best_of_n=2,
                  warmup_steps=2, fd_net_steps=30),  # held-out choice off: tests switch it on
    "cpu": dict(),
    "gpu": dict(unet_dir="runs/gpu/unet", reward_dir="runs/gpu/reward",  # the cpu preset at 32 px
                feedback_dir="data/feedback_gpu", out_dir="runs/gpu/finetune"),
}


@dataclasses.dataclass
class Inputs:
    """What stages 0-2 made, loaded and checked before any work is done."""
    pretrained: torch.nn.Module  # stage 0's model (EMA weights)
    pre: dict  # stage 0's config
    corpus: WebCorpus  # D_pre: stage 0's web corpus
    reward: torch.nn.Module  # stage 2's reward model r_phi
    clip: torch.nn.Module  # our CLIP, to train the reward again in later rounds
    stage2: dict  # stage 2's config: the reward's training settings, stage 1's flip rate
    stage1: Feedback  # stage 1's labeled feedback set


def load_inputs(cfg: FinetuneConfig, device) -> Inputs:
    """Stages 0-2's outputs; each missing file names the command that makes it."""
    made_by = f"python train_reward.py --preset {cfg.preset}"
    pretrained, pre = load_model(Path(cfg.unet_dir) / "ckpt.pt",
                                 f"python train_unet.py --preset {cfg.preset}")
    # channels_last: the convolutions run faster on CPU; same math.
    pretrained = pretrained.to(device, memory_format=torch.channels_last)
    return Inputs(pretrained, pre, WebCorpus(pre, device, Path(cfg.unet_dir) / "corpus.pt"),
                  load_reward(Path(cfg.reward_dir), made_by), *load_stage2(cfg.reward_dir, made_by),
                  load_feedback(Path(cfg.feedback_dir) / "train", made_by))


# ----------------------------------------------------------------------------- D_model
def sample_round(model, folder: Path, records: list[dict], n_labels: int, flip_rate: float,
                 cfg: FinetuneConfig) -> Feedback:
    """Sample `model` on the records into folder/labeled (n_labels of them, evenly over the
    four categories, labeled by stage 1's labeler) and folder/unlabeled (the rest); rank 0
    samples, the other ranks wait. Returns the labeled set (empty if n_labels is 0)."""
    picked = set((np.arange(n_labels) * len(records)) // max(1, n_labels))
    sampling = dict(num_inference_steps=cfg.num_inference_steps,
                    guidance_scale=cfg.d_model_guidance)
    if distributed.is_main():
        if n_labels:
            collect(model, folder / "labeled", [r for i, r in enumerate(records) if i in picked],
                    flip_rate=flip_rate, **sampling)
        collect(model, folder / "unlabeled", [r for i, r in enumerate(records) if i not in picked],
                flip_rate=0.0, labeler="none", **sampling)
    distributed.barrier()
    if not n_labels:
        return Feedback([], np.zeros((0, 0, 0, 3), np.uint8), {})
    return load_feedback(folder / "labeled", "python finetune.py")


def retrain_reward(folder: Path, k: int, labels: list[Feedback], inputs: Inputs, cfg, device):
    """Round k's reward: Eq. 1 again, stage 2's settings, on every label so far; rank 0 trains
    it (or finds it on resume), every rank loads it."""
    stage2 = inputs.stage2
    if distributed.is_main() and not (cfg.resume and (folder / "reward.pt").exists()):
        names = {f.name for f in dataclasses.fields(RewardTrainConfig)}
        rcfg = RewardTrainConfig(**{**{n: stage2[n] for n in names if n in stage2},
                                    "seed": seeds.round_seed(stage2["seed"], k)})
        rows = [r for fb in labels for r in fb.rows]
        images = stack_images([fb.images for fb in labels])  # (N, H, W, 3) every label so far
        reward = train_reward_model(inputs.clip.to(device), rows, images, rcfg, stage2["lam"],
                                    device)
        save_checkpoint(folder / "reward.pt", {
            "model": reward.state_dict(), "lam": stage2["lam"],
            "clip_config": dataclasses.asdict(inputs.clip.cfg), "config": stage2})
    distributed.barrier()
    return load_reward(folder, "python finetune.py")


# ----------------------------------------------------------------------------- Eq. 2
def finetune(folder: Path, run: Run, cfg: FinetuneConfig, start, inputs: Inputs,
             d_model: DModel | None, device, mse):
    """One fine-tuning run of Eq. 2 (plus the anchor) from the weights of `start`, with the
    run's resolved config `cfg`, checkpointed in folder. Returns (EMA model, finished)."""
    n_model = 0 if run.weights is None else round(cfg.batch_size * cfg.model_fraction)
    if n_model:
        keep = d_model.labeled | run.unlabeled  # (N,) bool
        x_all, ids_all = d_model.x[keep].to(device), d_model.ids[keep]  # images on the device
        w_all = getattr(d_model, run.weights)[keep]  # (N',) reward scores or gold labels
        if cfg.balance:
            w_all = balance_groups(w_all, [g for g, k in zip(d_model.group, keep) if k])
    n_pre = cfg.batch_size - n_model

    def make_batch(step: int) -> Batch:
        rng = seeds.finetune_batch(cfg.seed, step)
        x0, ids = inputs.corpus.batch(rng, n_pre)  # D_pre: (n_pre, 3, H, W), (n_pre, L)
        weights = torch.ones(n_pre)  # the control: D_pre alone
        if n_model:
            idx = torch.from_numpy(rng.integers(0, len(x_all), n_model))
            x0 = torch.cat([x_all[idx.to(device)], x0])  # (B, 3, H, W): [D_model; D_pre]
            ids = torch.cat([ids_all[idx], ids])
            weights = eq2_weights(w_all[idx], n_pre, cfg.beta)  # (B,)
        # Caption dropout on every row, D_model too, as in pretraining. Guidance samples with
        # eps_u + s (eps_c - eps_u): were only the conditional model to move toward D_model,
        # that move (its artifacts too) would come out s times larger.
        drop_captions(ids, rng, cfg.p_uncond)
        return Batch(x0.contiguous(memory_format=torch.channels_last), ids, weights, n_model,
                     cfg.model_t_min, cfg.beta_below_cut)

    anchor = None
    if n_model and cfg.anchor:  # the pretrained model, frozen, is the anchor of every round
        anchor = Anchor(inputs.pretrained.eval().requires_grad_(False), cfg.anchor,
                        kl_step_weights(Scheduler().alphas_cumprod))
    model = copy.deepcopy(start).to(device, memory_format=torch.channels_last)
    model.requires_grad_(True)  # start may be an EMA copy, whose weights are frozen
    carry = {"model_config": dataclasses.asdict(start.cfg), "config": inputs.pre}  # tune again
    if cfg.pretrained_below:  # unet.load_model reads the checkpoint back as PretrainedBelowCut
        carry["pretrained_below"] = {"ckpt": str(Path(cfg.unet_dir) / "ckpt.pt"),
                                     "cut": cfg.pretrained_below}
    ema_model, curve, finished = train(model, cfg, make_batch, folder / "ckpt.pt",
                                       f"finetune {folder.parent.name}/{folder.name}", carry, mse,
                                       anchor)
    if finished and distributed.is_main():
        atomic_write_text(folder / "loss_curve.json", json.dumps(curve))
    return ema_model, finished


# ----------------------------------------------------------------------------- rounds
class Clock:
    """Where stage 3's time goes: seconds per phase, summed over runs and rounds."""

    def __init__(self):
        self.seconds, self.last = {}, time.time()

    def lap(self, phase: str):
        """Charge the time since the last lap to `phase`."""
        now = time.time()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now


@dataclasses.dataclass
class RunResult:
    """A run's rounds as rank 0 measured them, and the round it keeps (0: the pretrained model)."""
    model: torch.nn.Module  # the kept round's EMA model (as sampled: PretrainedBelowCut or not)
    evals: dict  # {round: (metrics, goods, images)}: the kept round (>= 1), or every round
    kept: int  # evaluate.pick_round on `heldout`; the last for the control, one round, no signal
    heldout: list  # the held-out signal of round 0 (pretrained), 1, 2, ... (or None)


def run_rounds(name: str, inputs: Inputs, d_model: DModel, cfg: FinetuneConfig, device, mse,
               evaluator: Evaluator | None, pre_signal: dict | None, clock: Clock):
    """The rounds of run `name` (one round: the paper's method), each measured on the held-out
    prompts by rank 0, which then evaluates the round the run keeps (every round with
    --eval_every_round). Round k lives in out_dir/name/round{k}: its samples, labels, reward,
    checkpoint, held-out signal and (if evaluated) evaluation. --stop_after counts the run's
    steps over all rounds. Returns its RunResult, or None if --stop_after stopped it."""
    run = RUNS[name]
    cfg = run.config(cfg)
    per_round = cfg.steps // cfg.rounds
    model, reward, labels, evals = inputs.pretrained, inputs.reward, [inputs.stage1], {}
    sampler = model  # what draws the images: the model, or PretrainedBelowCut around it
    # The control is the same-compute reference of every round; the learned reward, which it
    # neither trains on nor moves, has nothing to choose among its rounds. A one-round run (the
    # paper's) keeps its round, as the paper does. Neither samples the held-out prompts.
    chooses = run.weights is not None and cfg.rounds > 1
    models, signals = [model], [pre_signal if chooses else None]  # round 0: the pretrained model
    for k in range(1, cfg.rounds + 1):
        folder = Path(cfg.out_dir) / name / f"round{k}"
        left = cfg.stop_after - (k - 1) * per_round  # steps left before --stop_after
        if cfg.stop_after and left <= 0:
            return None
        if not cfg.resume and distributed.is_main():  # an earlier run's samples must not be reused
            for sub in ("labeled", "unlabeled"):
                shutil.rmtree(folder / sub, ignore_errors=True)
        rcfg = dataclasses.replace(cfg, seed=seeds.round_seed(cfg.seed, k), steps=per_round,
                                   stop_after=left if cfg.stop_after and left < per_round else 0)
        if run.weights is not None and k > 1:  # round k's D_model: the current model's samples
            records = feedback_records("seen", cfg.unlabeled_per_category,
                                       rcfg.seed + seeds.UNLABELED)
            labels.append(sample_round(sampler, folder, records, cfg.labels_per_round,
                                       inputs.stage2["flip_rate"], rcfg))
            if run.weights == "reward" and cfg.labels_per_round:
                reward = retrain_reward(folder, k, labels, inputs, rcfg, device)
            d_model = load_d_model(labels[-1], folder / "unlabeled", reward, device)
            clock.lap("D_model samples, labels, rewards")
        model, finished = finetune(folder, run, rcfg, model, inputs, d_model, device, mse)
        clock.lap("training")
        if not finished:
            return None
        sampler = (PretrainedBelowCut(model, inputs.pretrained, cfg.pretrained_below)
                   if cfg.pretrained_below else model)
        if evaluator is not None:
            if cfg.eval_every_round:
                evals[k] = evaluate_round(evaluator, sampler, name, k, cfg)
            signals.append(evaluator.heldout(sampler, f"{name}/round{k}",
                                             folder / "heldout.json", reuse=cfg.resume)
                           if chooses else None)
            clock.lap("evaluation")
        models.append(sampler)
    kept = cfg.rounds if None in signals else pick_round(signals, cfg.keep_tolerance)
    if evaluator is not None and kept and kept not in evals:  # round 0: the pretrained model's
        evals[kept] = evaluate_round(evaluator, models[kept], name, kept, cfg)
        clock.lap("evaluation")
    return RunResult(models[kept], evals, kept, signals)


def evaluate_round(evaluator: Evaluator, sampler, name: str, k: int, cfg: FinetuneConfig):
    """Round k of run `name` on the evaluation records: (metrics, goods, images), saved to its
    round folder (read back on resume)."""
    return evaluator.model(sampler, f"{name}/round{k}",
                           Path(cfg.out_dir) / name / f"round{k}" / "eval.json", reuse=cfg.resume)


def best_of_n(pretrained, reward, records: list[dict], first: np.ndarray,
              cfg: FinetuneConfig) -> np.ndarray:
    """The paper's strong baseline: n samples of the pretrained model per record (the first
    are the evaluation's own), keep the one the reward ranks highest. Ranked by the logit: the
    sigmoid saturates at exactly 1.0, and ties would keep the first sample."""
    cands = [first] + [generate(pretrained, [{**r, "seed": r["seed"] + seeds.BEST_OF_N_STRIDE * k}
                                             for r in records],
                                cfg.num_inference_steps, cfg.guidance_scale)
                       for k in range(1, cfg.best_of_n)]
    prompts = [r["prompt"] for r in records]
    logits = torch.stack([reward.score(c, prompts, logit=True) for c in cands])  # (n, N)
    return np.stack([cands[k][i] for i, k in enumerate(logits.argmax(0).tolist())])


def round1_d_model(cfg: FinetuneConfig, inputs: Inputs, device) -> DModel | None:
    """The paper's D_model: stage 1's labels + unlabeled samples of the pretrained model (rank 0
    samples them once, resumable), every image scored by r. None when only the control runs."""
    if not any(RUNS[name].weights for name in cfg.runs.split(",")):
        return None
    records = feedback_records("seen", cfg.unlabeled_per_category, cfg.seed + seeds.UNLABELED)
    sample_round(inputs.pretrained, Path(cfg.feedback_dir), records, 0, 0.0, cfg)
    return load_d_model(inputs.stage1, Path(cfg.feedback_dir) / "unlabeled", inputs.reward, device)


def main(argv=None):
    cfg = parse_config(FinetuneConfig, PRESETS, argv)
    distributed.setup()
    device = pick_device(cfg.device, cfg.threads)
    mse = resolve_loss_backend(cfg.loss_backend)
    out = check_writable(cfg.out_dir)
    t0, clock = time.time(), Clock()
    inputs = load_inputs(cfg, device)
    clock.lap("loading")

    # ---- The pretrained model's evaluation and held-out signal: rank 0 alone evaluates.
    evaluator = before = pre_signal = None
    if distributed.is_main():
        evaluator = Evaluator.for_config(cfg, inputs.pretrained.cfg.resolution, inputs.reward)
        before = evaluator.model(inputs.pretrained, "pretrained", out / "pretrained_eval.json",
                                 reuse=cfg.resume)
        pre_signal = evaluator.heldout(inputs.pretrained, "pretrained",
                                       out / "pretrained_heldout.json", reuse=cfg.resume)
        clock.lap("evaluation")

    # ---- Round 1's D_model, then every run's rounds of Eq. 2 and the evaluation of the kept one.
    d_model = round1_d_model(cfg, inputs, device)
    clock.lap("D_model samples, labels, rewards")
    runs = {name: (RUNS[name], RUNS[name].config(cfg)) for name in cfg.runs.split(",")}
    results = {}
    for name in runs:
        results[name] = run_rounds(name, inputs, d_model, cfg, device, mse, evaluator,
                                   pre_signal, clock)
        if results[name] is None:
            print(f"stopped by --stop_after in run {name}; the same command with --resume true "
                  f"goes on from there")
            return

    # ---- The best-of-n baseline, then the report: tables, win rates, grids, plots.
    if evaluator is not None:
        baselines = {}
        if cfg.best_of_n > 1:
            baselines[f"best_of_{cfg.best_of_n}"] = evaluator.images(best_of_n(
                inputs.pretrained, inputs.reward, evaluator.records, before[2], cfg))[:2]
            clock.lap("best-of-n")
        report.write(out, cfg, runs, len(inputs.stage1.rows), inputs.pretrained, before, results,
                     baselines, clock, t0)


if __name__ == "__main__":
    run(main)
