"""UnlearnDiffAtk (Zhang et al. 2024): adversarial prefix tokens found with the unlearned
model's own denoising loss on a reference image of the concept.

k prefix tokens are relaxed one-hot vectors over the candidate vocabulary, kept on the
simplex by projection after every Adam step (lr 0.01). Loss:
`|| eps_unlearned(noised(x0_ref, t), t, [prefix; prompt]) - noise ||²`, x0_ref an image of
the concept made by the ORIGINAL model, t cycling through a fixed sweep of timesteps.
Every `check_every` steps the vectors are projected to hard tokens (argmax), the prompt is
generated on the unlearned model and detected; the attack stops at the first detection.
"""

from __future__ import annotations

import torch

from trust.attacks.base import Attack, AttackPrompt, AttackTarget, PromptOutcome
from trust.attacks.text import Layout, candidate_tokens, noise_target, project_simplex, token_embeddings
from trust.config import UnlearnDiffAtkParams


def timestep_sweep(num_train: int, n: int) -> torch.Tensor:
    """n timesteps spread evenly over (0, num_train), avoiding the very ends."""
    return torch.linspace(0.05 * num_train, 0.95 * num_train, n).round().long()


class UnlearnDiffAtk(Attack):
    name = "unlearndiffatk"
    needs_original = True
    params: UnlearnDiffAtkParams

    @classmethod
    def default_params(cls) -> UnlearnDiffAtkParams:
        return UnlearnDiffAtkParams()

    def reference(self, target: AttackTarget, ap: AttackPrompt) -> torch.Tensor:
        """x0_ref (1, C, h, w) latents: the original model's image of the prompt, the first of
        `reference_tries` seeds whose image the detector accepts (else the first)."""
        first = None
        for j in range(self.params.reference_tries):
            img = target.generate(ap.prompt, AttackPrompt(ap.prompt, ap.seed + 1000 * j, ap.guidance), target.original)[:1]
            first = img if first is None else first
            if target.detector.detect(img)[0]:
                break
        else:
            img = first
        with torch.no_grad():
            return target.original.encode_images(img.to(target.original.unet.device))

    def attack_one(self, target: AttackTarget, ap: AttackPrompt, index: int) -> PromptOutcome:
        p, parts = self.params, target.unlearned
        g = self.generator(index)
        x0 = self.reference(target, ap)
        cand = candidate_tokens(parts.tokenizer)
        E = token_embeddings(parts)[cand.to(token_embeddings(parts).device)].detach()  # (V, D)
        layout = Layout.build(parts.tokenizer, ap.prompt, p.prefix_tokens, "prefix")
        init = torch.randint(len(cand), (p.prefix_tokens,), generator=g)
        onehot = torch.nn.functional.one_hot(init, len(cand)).float().to(E.device).requires_grad_(True)
        opt = torch.optim.Adam([onehot], lr=p.lr)
        sweep = timestep_sweep(parts.scheduler.config.num_train_timesteps, p.timesteps)
        # Fixed evaluation batch: every sweep timestep with fixed noise, to report the objective.
        eval_noise = torch.randn((len(sweep),) + tuple(x0.shape[1:]), generator=g).to(x0.device)
        sweep = sweep.to(x0.device)

        def loss_at(t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
            x_t = parts.scheduler.add_noise(x0.expand(len(t), -1, -1, -1), noise, t)
            cond = layout.encode(parts, (onehot @ E).unsqueeze(0)).expand(len(t), -1, -1)
            eps = parts.unet(x_t, t, encoder_hidden_states=cond).sample
            return ((eps - noise_target(parts, x0, noise, t)) ** 2).mean()

        def objective() -> float:
            with torch.no_grad():
                return float(loss_at(sweep, eval_noise))

        out = PromptOutcome(ap.prompt, target.seeds(ap), ap.guidance, False, objective_start=objective())
        best_score = -1.0
        budget = self.steps_budget(p.steps)
        for step in range(budget):
            pos = ((step * p.batch_timesteps + torch.arange(p.batch_timesteps)) % len(sweep)).to(sweep.device)
            t = sweep[pos]
            noise = torch.randn((len(t),) + tuple(x0.shape[1:]), generator=g).to(x0.device)
            loss = loss_at(t, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                onehot.copy_(project_simplex(onehot))
            out.history.append(float(loss.detach()))
            out.steps_run = step + 1
            if (step + 1) % p.check_every == 0 or step + 1 == budget:
                hard = cand[onehot.detach().argmax(-1).cpu()]
                text = layout.text(hard)
                hit, score, images = target.check(text, ap)
                if hit or score > best_score:
                    best_score = score
                    out.adversarial, out.score, out.images = text, score, images
                    out.embedding = onehot.detach().clone()
                if hit:
                    out.broken = True
                    break
        out.objective_end = objective()
        return out
